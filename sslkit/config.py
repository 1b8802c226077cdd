"""Typed, validated configuration.

The schema is a tree of frozen dataclasses; every key has a default. A YAML file (read with
``yaml.safe_load`` only) and ``--set key=value`` overrides (values parsed as YAML scalars or
flow lists) are merged over the defaults, validated, and method-dependent defaults (keys left
``null``) are resolved. The result is a frozen :class:`Config`: built once, passed down as
typed sub-configs, never mutated.

Every problem is a :class:`~sslkit.errors.ConfigError` whose one-line message names the key,
the value and what is allowed (or, for an unknown key, the closest valid key).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import yaml

from sslkit.errors import ConfigError

DEMO_CONFIG = "configs/demo.yaml"


def _f(default: Any = None, *, gt: float | None = None, ge: float | None = None,
       lt: float | None = None, le: float | None = None, length: int | None = None,
       help: str = "") -> Any:
    """A schema field with optional numeric bounds (checked on every number, list items too)."""
    meta = {"gt": gt, "ge": ge, "lt": lt, "le": le, "length": length, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda d=tuple(default): list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = _f("runs/default", help="run directory (config, metrics, tb/, checkpoints)")
    seed: int = _f(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = _f("auto", help="auto picks CUDA when present")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _f(
        "auto", help="auto: bf16 on CUDA when supported, else fp32")
    channels_last: bool = _f(False)
    num_threads: Optional[int] = _f(None, ge=1, help="torch CPU threads (null: torch default)")
    log_every_steps: int = _f(10, ge=1)
    tensorboard: bool = _f(True)
    aug_grid_every: int = _f(10, ge=0, help="epochs between augmentation grids (0: start only)")
    progress: bool = _f(True, help="tqdm progress bars")
    overwrite: bool = _f(False, help="allow a new run to replace another run's directory")


@dataclass(frozen=True)
class DataConfig:
    name: Literal["fashion_mnist", "cifar10", "cifar100", "stl10", "imagefolder",
                  "synthetic"] = _f("fashion_mnist")
    root: str = _f("data")
    image_size: int = _f(32, ge=8, help="side of the augmented views")
    load_size: Optional[int] = _f(None, ge=8, help="imagefolder: side the shorter edge is "
                                  "resized to for evaluation (Resize(256) + CenterCrop(224)), "
                                  "and the square of crop_from=square (null: "
                                  "image_size*256/224)")
    crop_from: Literal["original", "square"] = _f(
        "original", help="imagefolder pretraining: random crops of the whole decoded image "
        "(original, the papers' recipe) or of a centre load_size square (square, for "
        "small-image folders)")
    decode_device: Literal["cpu", "cuda"] = _f(
        "cpu", help="imagefolder, crop_from=original: decode JPEGs in the loader workers (cpu) "
        "or in batches on the GPU with nvjpeg (cuda; the workers only read bytes)")
    channels: Literal[1, 3] = _f(3, help="1 or 3; grayscale data is repeated to 3 when 3")
    download: bool = _f(False)
    subset: Union[int, float, None] = _f(None, gt=0, help="count (int) or fraction (0,1]")
    long_tail: Optional[float] = _f(None, ge=1, help="imbalance ratio r of a long-tailed "
                                    "training set (null: off): class i of the sorted classes "
                                    "keeps floor(n_max r^(-i/(C-1))) images (Cao et al. 2019); "
                                    "the test split stays whole")
    num_workers: int = _f(2, ge=0)
    class_list: Optional[str] = _f(None, help="imagefolder: file naming the classes to use")
    skip_corrupt: bool = _f(False, help="imagefolder: skip undecodable images (logs a count)")
    mean: Optional[list[float]] = _f(None, length=None)
    std: Optional[list[float]] = _f(None, gt=0)
    synthetic_classes: int = _f(10, ge=2)
    synthetic_train: int = _f(2000, ge=1)
    synthetic_test: int = _f(500, ge=1)


@dataclass(frozen=True)
class AugmentConfig:
    """null means "the preset's value"; a 2-list for blur_p/solarize_p gives (view1, view2)."""
    preset: Literal["auto", "mocov2", "mocov3", "mocov2_small", "mocov3_small"] = _f("auto")
    crop_scale: Optional[list[float]] = _f(None, gt=0, le=1, length=2)
    crop_ratio: Optional[list[float]] = _f(None, gt=0, length=2)
    flip_p: Optional[float] = _f(None, ge=0, le=1)
    jitter_p: Optional[float] = _f(None, ge=0, le=1)
    brightness: Optional[float] = _f(None, ge=0)
    contrast: Optional[float] = _f(None, ge=0)
    saturation: Optional[float] = _f(None, ge=0)
    hue: Optional[float] = _f(None, ge=0, le=0.5)
    grayscale_p: Optional[float] = _f(None, ge=0, le=1)
    blur_p: Union[float, list[float], None] = _f(None, ge=0, le=1)
    blur_sigma: Optional[list[float]] = _f(None, gt=0, length=2)
    solarize_p: Union[float, list[float], None] = _f(None, ge=0, le=1)
    solarize_threshold: Optional[float] = _f(None, ge=0, le=1)


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal["resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small",
                      "vit_base"] = _f("resnet18")
    cifar_stem: bool = _f(False, help="3x3 stride-1 conv1, no maxpool (for 28-32 px images)")
    maxpool: Optional[bool] = _f(None, help="ResNet stem max-pool (null: kept unless "
                                 "cifar_stem; true with cifar_stem halves the maps, ~2.5x faster)")
    width: int = _f(64, ge=1, help="ResNet base width (64 = torchvision)")
    zero_init_residual: bool = _f(False)
    patch_size: int = _f(16, ge=1, help="ViT patch size")
    vit_depth: Optional[int] = _f(None, ge=1, help="ViT depth override (null: the model's)")
    freeze_patch_embed: bool = _f(True, help="ViT: frozen random patch projection (MoCo-v3)")


@dataclass(frozen=True)
class MethodConfig:
    """null values are resolved to the method's paper default at load time."""
    name: Literal["mocov2", "mocov3"] = _f("mocov2")
    temperature: Optional[float] = _f(None, gt=0)
    queue_size: Optional[int] = _f(None, ge=1, help="MoCo-v2 queue length K")
    momentum: Optional[float] = _f(None, ge=0, le=1, help="EMA momentum (start value)")
    momentum_schedule: Optional[Literal["constant", "cosine"]] = _f(None)
    proj_dim: Optional[int] = _f(None, ge=1)
    proj_hidden_dim: Optional[int] = _f(None, ge=1, help="MoCo-v2: null = the backbone's "
                                        "feature dim (the official D-D-128 head)")
    proj_layers: Optional[int] = _f(None, ge=1)
    proj_bn: Optional[bool] = _f(None, help="BN in the projector's hidden layers")
    pred_hidden_dim: Optional[int] = _f(None, ge=1, help="MoCo-v3 predictor width")
    symmetric: bool = _f(False, help="MoCo-v2: symmetric loss (MoCo-v3 always is)")
    shuffle_bn: bool = _f(True, help="MoCo-v2: shuffle BN for the key encoder (across "
                          "processes; in one process emulated with bn_splits groups)")
    bn_splits: int = _f(8, ge=1, help="MoCo-v2 in one process: BN statistics per group of "
                        "the batch (1 = plain BN, which leaks the positive)")
    sync_bn: bool = _f(False)


@dataclass(frozen=True)
class BatchFormerConfig:
    enabled: bool = _f(False)
    heads: int = _f(4, ge=1)
    ffn_dim: Optional[int] = _f(None, ge=1, help="null: the feature dim")
    dropout: float = _f(0.5, ge=0, lt=1)
    layers: int = _f(1, ge=1)
    scope: Literal["local", "global"] = _f("local", help="attend over the per-process batch "
                                           "(local) or the gathered batch (global)")
    version: Literal["v1", "v2"] = _f("v1", help="v1: on the pooled features (CVPR 2022); v2: "
                                      "on every token between ViT blocks (BatchFormerV2)")
    insert_after: Optional[list[int]] = _f(None, help="v2: 0-based ViT blocks followed "
                                           "by the module (null: depth-1-round(depth/4), [8] "
                                           "for 12 blocks)")
    shared: bool = _f(True, help="v2: one module reused at every insertion point (false: one "
                      "per point)")
    lr_scale: float = _f(1.0, gt=0, help="LR of the BatchFormer's parameter group, as a "
                         "multiple of the optimizer's LR")
    weight_decay: Optional[float] = _f(None, ge=0, help="weight decay of the BatchFormer's "
                                       "parameter group (null: optim.weight_decay)")
    keys: Literal["plain", "both"] = _f(
        "plain", help="plain: the momentum keys have no BatchFormer and are the positives of "
        "both query streams; both: the authors' scheme, the momentum branch also passes its "
        "features through the same BatchFormer (no gradient), the loss averages the 4 query x "
        "key stream pairings and MoCo-v2 enqueues both key streams")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "lars", "adamw"] = _f("sgd")
    lr: float = _f(0.03, gt=0, help="base LR for a global batch of 256")
    lr_scaling: Literal["linear", "none"] = _f("linear", help="linear: lr x global_batch/256")
    momentum: float = _f(0.9, ge=0, lt=1)
    weight_decay: float = _f(1e-4, ge=0)
    betas: list[float] = _f([0.9, 0.999], ge=0, lt=1, length=2)
    warmup_epochs: float = _f(0.0, ge=0)
    schedule: Literal["cosine", "constant"] = _f("cosine")
    min_lr: float = _f(0.0, ge=0)
    lars_eta: float = _f(0.001, gt=0)
    exclude_bias_norm: bool = _f(False, help="no weight decay on bias/norm (LARS: always)")
    grad_clip: Optional[float] = _f(None, gt=0)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(200, ge=1)
    batch_size: int = _f(256, ge=1, help="global batch (split over processes)")
    max_steps: Optional[int] = _f(None, ge=1, help="null: no cap")
    checkpoint_every_steps: Optional[int] = _f(None, ge=1, help="null: once per epoch")
    nan_policy: Literal["stop", "skip"] = _f("stop")


@dataclass(frozen=True)
class EvalConfig:
    mode: Literal["standard", "cached"] = _f("standard")
    epochs: int = _f(100, ge=1)
    batch_size: int = _f(256, ge=1)
    lr: float = _f(30.0, gt=0, help="standard probe LR (for batch 256)")
    weight_decay: float = _f(0.0, ge=0)
    schedule: Literal["step", "cosine"] = _f("step")
    milestones: list[float] = _f([0.6, 0.8], gt=0, lt=1, help="step decays, as fractions "
                                 "of eval.epochs")
    lr_grid: list[float] = _f([0.01, 0.03, 0.1, 0.3, 1.0, 3.0], gt=0)
    wd_grid: list[float] = _f([0.0, 1e-5, 1e-4], ge=0)
    aug_copies: int = _f(0, ge=0, help="cached mode: augmented copies of train features")
    val_fraction: float = _f(0.1, gt=0, lt=1, help="cached mode: held-out part of train")
    knn_k: int = _f(200, ge=1)
    knn_t: float = _f(0.1, gt=0)
    knn_ks: list[int] = _f([10, 20, 100, 200], ge=1)
    knn_ts: list[float] = _f([0.07, 0.1], gt=0)
    knn_every: int = _f(1, ge=0, help="epochs between online kNN (0: off)")
    knn_bank_size: Optional[int] = _f(None, ge=1, help="online kNN: train images in the bank")
    embedding_samples: int = _f(500, ge=0, help="TensorBoard projector samples (0: off)")
    shot_groups: list[int] = _f([100, 20], ge=0, length=2, help="many-shot classes have more "
                                "than the first number of training images, few-shot fewer "
                                "than the second (Liu et al. 2019); medium between")
    online_probe: bool = _f(False, help="train a linear head on the detached backbone "
                            "features of each training batch (its own optimizer; no effect "
                            "on the backbone); metrics keys probe_*")
    online_probe_lr: float = _f(0.1, gt=0, help="the online probe's SGD LR (batch 256)")


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    batchformer: BatchFormerConfig = field(default_factory=BatchFormerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (lists, not tuples), safe for ``yaml.safe_dump``."""
        return {s.name: {f.name: _plain(getattr(getattr(self, s.name), f.name))
                         for f in dataclasses.fields(getattr(self, s.name))}
                for s in dataclasses.fields(self)}

    def to_yaml(self) -> str:
        """Block-style YAML (lists inline) that :func:`load` reads back to an equal Config."""
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False)


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing sections as blocks and lists inline: ``betas: [0.9, 0.999]``."""


_Dumper.add_representer(
    list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# --------------------------------------------------------------------------- schema access
SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(Config)[f.name]
                             for f in dataclasses.fields(Config)}


def all_keys() -> list[str]:
    """Every dotted key of the schema, e.g. ``train.batch_size``."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _field(section: str, name: str) -> tuple[Any, dict]:
    cls = SECTIONS[section]
    return typing.get_type_hints(cls)[name], {f.name: f for f in dataclasses.fields(cls)}[name].metadata


def _is_str_key(key: str) -> bool:
    section, _, name = key.partition(".")
    try:
        tp, _ = _field(section, name)
    except KeyError:
        return False
    return tp is str or (typing.get_origin(tp) is Union and str in typing.get_args(tp))


# Names other toolkits use for our keys: a spelling match would miss these.
_ALIASES = {"learning_rate": "lr", "base_lr": "lr", "wd": "weight_decay", "bs": "batch_size",
            "epoch": "epochs", "max_epochs": "epochs", "tau": "temperature", "t": "temperature",
            "k": "queue_size", "arch": "backbone", "m": "momentum"}


def _unknown(key: str) -> ConfigError:
    section, _, name = key.rpartition(".")
    alias = f"{section}.{_ALIASES[name]}" if name in _ALIASES else None
    close = [alias] if alias in all_keys() else difflib.get_close_matches(
        key, all_keys(), n=1, cutoff=0.5)
    if not close and "." in key:  # right field name under the wrong section?
        tail = key.rsplit(".", 1)[1]
        close = [k for k in all_keys() if k.endswith("." + tail)][:1]
    hint = f"; did you mean '{close[0]}'?" if close else "; see the keys in configs/demo.yaml"
    return ConfigError(f"unknown config key '{key}'{hint}")


# --------------------------------------------------------------------------- type checking
def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is Union:
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"a list of {_describe(args[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, converted value) for ``value`` against the annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        if value is None:
            return (type(None) in args), None
        for a in args:  # int before float keeps subset=5 a count and subset=0.5 a fraction
            if a is type(None):
                continue
            ok, v = _coerce(value, a)
            if ok:
                return True, v
        return False, value
    if origin is Literal:
        return (value in args and type(value) in {type(a) for a in args}), value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        out = []
        for item in value:
            ok, v = _coerce(item, args[0])
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, float(value)
        if isinstance(value, float):
            return math.isfinite(value), value
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                v = float(value)
            except ValueError:
                return False, value
            return math.isfinite(v), v
        return False, value
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported schema type {tp!r}")  # a bug in the schema, not user input


def _check_bounds(key: str, value: Any, meta: dict) -> None:
    if value is None:
        return
    if isinstance(value, list) and meta.get("length") is not None and len(value) != meta["length"]:
        raise ConfigError(f"{key}={_show(value)} is invalid: expected a list of "
                          f"{meta['length']} numbers")
    for v in (value if isinstance(value, list) else [value]):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        for op, bound, ok, word in (("gt", meta.get("gt"), lambda a, b: a > b, ">"),
                                    ("ge", meta.get("ge"), lambda a, b: a >= b, ">="),
                                    ("lt", meta.get("lt"), lambda a, b: a < b, "<"),
                                    ("le", meta.get("le"), lambda a, b: a <= b, "<=")):
            if bound is not None and not ok(v, bound):
                raise ConfigError(f"{key}={_show(value)} is out of range: must be {word} "
                                  f"{bound:g}")


def _show(v: Any) -> str:
    s = yaml.safe_dump(v, default_flow_style=True).strip()
    s = s[:-4].strip() if s.endswith("\n...") or s.endswith("...") else s
    return s if len(s) <= 60 else s[:57] + "..."


def _set_value(tree: dict, key: str, value: Any) -> None:
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name or "." in name:
        raise _unknown(key)
    if name not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        raise _unknown(key)
    tp, meta = _field(section, name)
    ok, v = _coerce(value, tp)
    if not ok:
        raise ConfigError(f"{key}={_show(value)} is invalid: expected {_describe(tp)}")
    _check_bounds(key, v, meta)
    tree.setdefault(section, {})[name] = v


# --------------------------------------------------------------------------- loading
def read_yaml_file(path: str | os.PathLike) -> dict:
    """Read a YAML mapping from a file with ``yaml.safe_load``; every failure is a ConfigError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"config file '{path}' does not exist; pass an existing YAML file "
                          f"(e.g. configs/demo.yaml)")
    if os.path.isdir(path):
        raise ConfigError(f"config path '{path}' is a directory, not a YAML file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(10_000_001)
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror}") from None
    if len(raw) > 10_000_000:
        raise ConfigError(f"config file '{path}' is larger than 10 MB; is it really a config?")
    if b"\x00" in raw:
        raise ConfigError(f"config file '{path}' is binary, not YAML text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text; save it as UTF-8 YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        if "python/" in text and "constructor" in type(e).__name__.lower():
            problem = "python tags are not allowed (configs are plain YAML)"
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"config file '{path}' is nested too deeply") from None
    if data is None:
        raise ConfigError(f"config file '{path}' is empty; start from configs/demo.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must be a mapping of sections (run:, data:, "
                          f"...), not a {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """Parse one ``key=value``; the value is a YAML scalar or flow list."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"malformed --set '{item}': expected key=value, e.g. "
                          f"--set train.epochs=10")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"malformed --set '{item}': the key before '=' is empty")
    if text.strip() == "":
        raise ConfigError(f"malformed --set '{item}': no value after '='; use null for none")
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        raise ConfigError(f"malformed --set '{item}': the value is not a YAML scalar; quote "
                          f"strings, e.g. --set run.output_dir=runs/x") from None
    if isinstance(value, dict):
        raise ConfigError(f"malformed --set '{item}': the value must be a scalar or a list, "
                          f"not a mapping")
    if _is_str_key(key) and value is not None and not isinstance(value, (str, list)):
        value = text.strip()  # run.output_dir=2024 or data.root=1e3 mean the text itself
    return key, value


def _flatten(data: dict, source: str) -> list[tuple[str, Any]]:
    out = []
    for section, body in data.items():
        if not isinstance(section, str):
            raise ConfigError(f"{source}: section name {_show(section)} is not a string")
        if section not in SECTIONS:
            raise _unknown(section if body is None or not isinstance(body, dict) or not body
                           else f"{section}.{next(iter(body))}")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys, not "
                              f"{_show(body)}")
        for name, value in body.items():
            out.append((f"{section}.{name}", value))
    return out


def build(data: dict | None = None, overrides: list[str] | None = None,
          source: str = "config") -> "Config":
    """Build a validated Config from a nested dict plus ``key=value`` overrides."""
    tree: dict[str, dict] = {}
    for key, value in _flatten(data or {}, source):
        _set_value(tree, key, value)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_value(tree, key, value)
    sections = {name: cls(**tree.get(name, {})) for name, cls in SECTIONS.items()}
    cfg = Config(**sections)
    cfg = resolve_defaults(cfg)
    validate(cfg)
    return cfg


def load(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (YAML) and apply ``overrides``; ``path=None`` starts from the defaults."""
    data = read_yaml_file(path) if path is not None else {}
    return build(data, overrides, source=os.fspath(path) if path is not None else "defaults")


def save(cfg: Config, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(cfg.to_yaml())


# --------------------------------------------------------------------------- defaults
def _is_vit(cfg: Config) -> bool:
    return cfg.model.backbone.startswith("vit")


def demo_config_path() -> str:
    """configs/demo.yaml from the working directory, else from the source checkout."""
    if os.path.isfile(DEMO_CONFIG):
        return DEMO_CONFIG
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), DEMO_CONFIG)
    return here if os.path.isfile(here) else DEMO_CONFIG


def method_defaults(cfg: Config) -> dict[str, Any]:
    """The papers' defaults for keys left null: MoCo-v2 (Chen et al. 2020; facebookresearch/moco)
    and MoCo-v3 (Chen, Xie & He 2021; facebookresearch/moco-v3)."""
    if cfg.method.name == "mocov2":  # MoCo-v2: K=65536, m=0.999, T=0.2, head D-D-128 no BN
        # proj_hidden_dim stays null: the backbone's feature dim (2048 for a ResNet-50)
        return dict(temperature=0.2, queue_size=65536, momentum=0.999,
                    momentum_schedule="constant", proj_dim=128, proj_hidden_dim=None,
                    proj_layers=2, proj_bn=False, pred_hidden_dim=None)
    vit = _is_vit(cfg)  # MoCo-v3: T=1.0 (ResNet) / 0.2 (ViT), m cosine 0.99 -> 1
    return dict(temperature=0.2 if vit else 1.0, queue_size=None, momentum=0.99,
                momentum_schedule="cosine", proj_dim=256, proj_hidden_dim=4096,
                proj_layers=3 if vit else 2, proj_bn=True, pred_hidden_dim=4096)


def resolve_defaults(cfg: Config) -> Config:
    m = cfg.method
    fill = {k: v for k, v in method_defaults(cfg).items() if getattr(m, k) is None}
    method = dataclasses.replace(m, **fill)
    aug = dataclasses.replace(cfg.augment, preset=resolved_preset(cfg))
    return dataclasses.replace(cfg, method=method, augment=aug)


def resolved_preset(cfg: Config) -> str:
    """``augment.preset``, with ``auto`` resolved: the method's preset (mocov2 / mocov3), in
    its ``_small`` variant (no blur) for images of at most 64 px."""
    if cfg.augment.preset != "auto":
        return cfg.augment.preset
    small = "_small" if cfg.data.image_size <= 64 else ""
    return ("mocov3" if cfg.method.name == "mocov3" else "mocov2") + small


def check_queue_size(queue_size: int, per_step: int, detail: str) -> None:
    """MoCo-v2's queue must be a multiple of the keys enqueued per step (``per_step``, made
    of ``detail``), so that every step writes one contiguous block."""
    if queue_size % per_step:
        ok = max(per_step, queue_size // per_step * per_step)
        raise ConfigError(f"method.queue_size={queue_size} must be a multiple of the keys "
                          f"enqueued per step ({per_step} = {detail}); e.g. "
                          f"--set method.queue_size={ok}")


def check_bn_splits(batch: int, bn_splits: int, what: str = "train.batch_size") -> None:
    """One-process shuffle-BN splits the batch into ``bn_splits`` equal groups."""
    if batch % bn_splits:
        raise ConfigError(f"{what}={batch} must be divisible by method.bn_splits={bn_splits} "
                          f"(shuffle-BN groups); change one of them, or --set "
                          f"method.bn_splits=1")


VIT_DEPTH = 12  # the depth of every ViT in sslkit.models.backbones (model.vit_depth overrides)


def default_insert_after(depth: int) -> list[int]:
    """BatchFormerV2's default placement for a ViT of ``depth`` blocks: after block
    ``depth - 1 - round(depth / 4)`` (halves round up), so that the last quarter of the blocks
    runs on both streams. 12 blocks: [8], the authors' DeiT placement (Hou et al.,
    github.com/zhihou7/BatchFormer, batchformer-v2/deit_share); 6: [3]; 4: [2]; 1: [0]."""
    return [depth - 1 - int(math.floor(depth / 4 + 0.5))]


def v2_needs_vit(backbone: str) -> ConfigError:
    """The error for BatchFormerV2 on a backbone that is no ViT."""
    return ConfigError(f"batchformer.version=v2 needs a ViT backbone (model.backbone=vit_tiny, "
                       f"vit_small or vit_base): it runs between transformer blocks, and "
                       f"model.backbone={backbone} has none; use batchformer.version=v1 with it")


def insertion_points(insert_after: Optional[list[int]], depth: int) -> list[int]:
    """BatchFormerV2's insertion points (sorted) for a ViT of ``depth`` blocks: the 0-based
    indices of ``batchformer.insert_after``, or :func:`default_insert_after` for null."""
    points = default_insert_after(depth) if insert_after is None else list(insert_after)
    if not points:
        raise ConfigError(f"batchformer.insert_after=[] names no block; give 0-based block "
                          f"indices in 0..{depth - 1}, or null for the default "
                          f"{default_insert_after(depth)}")
    bad = [i for i in points if not 0 <= i < depth]
    if bad:
        raise ConfigError(f"batchformer.insert_after={_show(points)} is out of range: the ViT "
                          f"has {depth} blocks, so the 0-based indices must be in "
                          f"0..{depth - 1} (default {default_insert_after(depth)})")
    if len(set(points)) != len(points):
        raise ConfigError(f"batchformer.insert_after={_show(points)} names a block twice; "
                          f"name each block once")
    return sorted(points)


def validate(cfg: Config) -> None:
    """Checks that involve more than one key."""
    if cfg.batchformer.enabled and cfg.batchformer.version == "v2":
        if not _is_vit(cfg):
            raise v2_needs_vit(cfg.model.backbone)
        insertion_points(cfg.batchformer.insert_after, cfg.model.vit_depth or VIT_DEPTH)
    if cfg.batchformer.keys == "both" and not cfg.batchformer.enabled:
        raise ConfigError("batchformer.keys=both passes the keys through the BatchFormer; set "
                          "batchformer.enabled=true, or batchformer.keys=plain")
    if cfg.method.name == "mocov2" and cfg.method.queue_size is not None:
        sym = cfg.method.symmetric
        streams = 2 if cfg.batchformer.enabled and cfg.batchformer.keys == "both" else 1
        check_queue_size(cfg.method.queue_size,
                         cfg.train.batch_size * (2 if sym else 1) * streams,
                         "train.batch_size" + (" x 2 (symmetric)" if sym else "")
                         + (" x 2 (batchformer.keys=both enqueues both key streams)"
                            if streams == 2 else ""))
    if cfg.method.name == "mocov2" and cfg.method.shuffle_bn and cfg.method.bn_splits > 1:
        check_bn_splits(cfg.train.batch_size, cfg.method.bn_splits)
    if cfg.data.mean is not None and len(cfg.data.mean) not in (1, cfg.data.channels):
        raise ConfigError(f"data.mean has {len(cfg.data.mean)} values; data.channels="
                          f"{cfg.data.channels} needs {cfg.data.channels}")
    if cfg.data.std is not None and len(cfg.data.std) not in (1, cfg.data.channels):
        raise ConfigError(f"data.std has {len(cfg.data.std)} values; data.channels="
                          f"{cfg.data.channels} needs {cfg.data.channels}")
    if cfg.data.decode_device == "cuda" and (cfg.data.name != "imagefolder"
                                             or cfg.data.crop_from != "original"):
        raise ConfigError(f"data.decode_device=cuda decodes ImageFolder JPEGs for crops of the "
                          f"original image; it needs data.name=imagefolder and "
                          f"data.crop_from=original (got {cfg.data.name}, "
                          f"{cfg.data.crop_from}); or set data.decode_device=cpu")
    if cfg.eval.shot_groups[0] < cfg.eval.shot_groups[1]:
        raise ConfigError(f"eval.shot_groups={_show(cfg.eval.shot_groups)} is invalid: give "
                          f"[many-shot above, few-shot below] with the first >= the second")
    if isinstance(cfg.data.subset, float) and cfg.data.subset > 1:
        raise ConfigError(f"data.subset={cfg.data.subset} is invalid: a fraction must be in "
                          f"(0, 1], a count must be an integer")
    for key in ("blur_p", "solarize_p"):
        v = getattr(cfg.augment, key)
        if isinstance(v, list) and len(v) != 2:
            raise ConfigError(f"augment.{key}={_show(v)} is invalid: give one probability or "
                              f"a list of 2 (view 1, view 2)")
    for key in ("crop_scale", "blur_sigma"):
        v = getattr(cfg.augment, key)
        if v is not None and v[0] > v[1]:
            raise ConfigError(f"augment.{key}={_show(v)} is invalid: the minimum exceeds the "
                              f"maximum")
    if cfg.optim.warmup_epochs >= cfg.train.epochs and cfg.optim.warmup_epochs > 0:
        raise ConfigError(f"optim.warmup_epochs={cfg.optim.warmup_epochs:g} must be less than "
                          f"train.epochs={cfg.train.epochs}")
    if cfg.eval.milestones != sorted(cfg.eval.milestones):
        raise ConfigError(f"eval.milestones={_show(cfg.eval.milestones)} must be increasing")
    if not cfg.eval.lr_grid or not cfg.eval.wd_grid or not cfg.eval.knn_ks or not cfg.eval.knn_ts:
        raise ConfigError("eval.lr_grid, eval.wd_grid, eval.knn_ks and eval.knn_ts must not "
                          "be empty")
    if not cfg.run.output_dir.strip():
        raise ConfigError("run.output_dir is empty; give a directory, e.g. runs/my_run")
