"""Typed, validated configuration: the schema (:mod:`sslkit.config.schema`) and its reading
from YAML and ``--set`` overrides (:mod:`sslkit.config.loading`).

    cfg = sslkit.config.load("configs/demo.yaml", ["train.epochs=3"])

``load`` returns the config as written, validated, with keys left ``null`` for "the default"
still null; :func:`sslkit.resolved.resolved` fills them from the code that owns each value,
once per run (the engine does it; ``run_pretrain.py --print-config`` shows the result).
"""
from sslkit.config.loading import (DEMO_CONFIG, build, demo_config_path, load, parse_override,
                                   read_yaml_file, save, validate)
from sslkit.config.schema import (SECTIONS, AugmentConfig, BatchFormerConfig, Config,
                                  DataConfig, EvalConfig, MethodConfig, ModelConfig,
                                  OptimConfig, RunConfig, TrainConfig, all_keys)

__all__ = ["DEMO_CONFIG", "SECTIONS", "AugmentConfig", "BatchFormerConfig", "Config",
           "DataConfig", "EvalConfig", "MethodConfig", "ModelConfig", "OptimConfig",
           "RunConfig", "TrainConfig", "all_keys", "build", "demo_config_path", "load",
           "parse_override", "read_yaml_file", "save", "validate"]
