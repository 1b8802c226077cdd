"""Typed, validated configuration: the schema (:mod:`sslkit.config.schema`), its reading
from YAML and ``--set`` overrides (:mod:`sslkit.config.loading`) and the rules of a config
alone (:mod:`sslkit.config.rules`).

    cfg = sslkit.config.load("configs/demo.yaml", ["train.epochs=3"])

``load`` returns the config as written, validated, with keys left ``null`` for "the default"
still null; :func:`sslkit.methods.resolve.resolved` fills them from the code that owns each
value, once per run (``run_pretrain.py --print-config`` shows the result).
"""
from sslkit.config.loading import (DEMO_CONFIG, build, demo_config_path, load, parse_override,
                                   read_yaml_file, save)
from sslkit.config.rules import validate
from sslkit.config.schema import (SECTIONS, AugmentConfig, BatchFormerConfig, Config,
                                  DataConfig, EvalConfig, FinetuneConfig, MethodConfig,
                                  ModelConfig, OptimConfig, RunConfig, TrainConfig, all_keys)

__all__ = ["DEMO_CONFIG", "SECTIONS", "AugmentConfig", "BatchFormerConfig", "Config",
           "DataConfig", "EvalConfig", "FinetuneConfig", "MethodConfig", "ModelConfig",
           "OptimConfig", "RunConfig", "TrainConfig", "all_keys", "build", "demo_config_path",
           "load", "parse_override", "read_yaml_file", "save", "validate"]
