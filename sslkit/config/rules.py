"""The rules of a config that need no more than the config itself: the cross-key checks of
:func:`validate`, and the one check of the augmentation values (:func:`check_augment`) and of
the normalisation statistics (:func:`check_normalization`), which the Python API
(:func:`sslkit.augment.build_views`) applies to its arguments too. Imports no torch.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import yaml

from sslkit.config.schema import BUILTIN_BACKBONES, TIMM_PREFIX, Config
from sslkit.errors import ConfigError

# The augmentation values a config (augment.*) or build_views(**overrides) may set.
AUGMENT_KEYS = ("crop_scale", "crop_ratio", "flip_p", "jitter_p", "brightness", "contrast",
                "saturation", "hue", "grayscale_p", "blur_p", "blur_sigma", "solarize_p",
                "solarize_threshold")
PER_VIEW = ("blur_p", "solarize_p")  # one value or (view 1, view 2)
RANGES = ("crop_scale", "crop_ratio", "blur_sigma")  # [min, max]
PROBABILITIES = ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p",
                 "solarize_threshold")


def show(v: Any) -> str:
    """A value as a config would spell it, cut to 60 characters (for one-line errors)."""
    s = yaml.safe_dump(v, default_flow_style=True).strip()
    s = s[:-4].strip() if s.endswith("\n...") or s.endswith("...") else s
    return s if len(s) <= 60 else s[:57] + "..."


def check_augment(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check augmentation values (None: the preset's) and return them in their working form
    (floats; the per-view keys and the ranges as 2-tuples): an unknown key, a per-view value
    that is neither one number nor 2, a range that is not [min, max], a probability outside
    [0, 1], a colour factor below 0 or a hue above 0.5 is a one-line ConfigError."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in AUGMENT_KEYS:
            raise ConfigError(f"unknown augmentation option '{key}'; valid: "
                              f"{', '.join(AUGMENT_KEYS)}")
        if value is None:
            continue
        name = f"augment.{key}={show(list(value) if isinstance(value, tuple) else value)}"
        if key in PER_VIEW:
            pair = list(value) if isinstance(value, (list, tuple)) else [value, value]
            if len(pair) != 2:
                raise ConfigError(f"{name} is invalid: give one probability or a list of 2 "
                                  f"(view 1, view 2)")
            value = (float(pair[0]), float(pair[1]))
        elif key in RANGES:
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ConfigError(f"{name} is invalid: give [min, max]")
            if value[0] > value[1]:
                raise ConfigError(f"{name} is invalid: the minimum exceeds the maximum")
            value = (float(value[0]), float(value[1]))
        else:
            value = float(value)
        numbers = value if isinstance(value, tuple) else (value,)
        if key in PROBABILITIES and not all(0.0 <= x <= 1.0 for x in numbers):
            raise ConfigError(f"{name} is invalid: must be in [0, 1]")
        if key == "hue" and not 0.0 <= value <= 0.5:
            raise ConfigError(f"{name} is invalid: must be in [0, 0.5]")
        if not all(x >= 0 for x in numbers):
            raise ConfigError(f"{name} is invalid: must be >= 0")
        out[key] = value
    return out


def check_normalization(mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                        channels: int) -> None:
    """``data.mean`` / ``data.std``: one value (for every channel) or one per channel; the
    std positive."""
    for key, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, channels):
            raise ConfigError(f"data.{key} has {len(values)} values; data.channels={channels} "
                              f"needs {channels} (or one for every channel)")
    if std is not None and not all(float(s) > 0 for s in std):
        raise ConfigError(f"data.std={show(list(std))} is invalid: every value must be > 0")


def validate(cfg: Config) -> None:
    """Checks that involve more than one key of the config alone. Rules that need the method's,
    the model's or the data source's facts (MoCo-v2's queue multiple, BatchFormerV2's
    insertion points, ``data.decode_device``) are checked where those facts live, when the
    config is resolved (:mod:`sslkit.methods.resolve`)."""
    bb = cfg.model.backbone
    if bb not in BUILTIN_BACKBONES and not (bb.startswith(TIMM_PREFIX) and bb[len(TIMM_PREFIX):]):
        names = ", ".join(repr(n) for n in BUILTIN_BACKBONES)
        raise ConfigError(f"model.backbone={show(bb)} is invalid: expected one of {names}, "
                          f"or '{TIMM_PREFIX}<name>' for a timm model")
    bf = cfg.batchformer
    if bf.keys == "both" and not bf.enabled:
        raise ConfigError("batchformer.keys=both passes the keys through the BatchFormer; set "
                          "batchformer.enabled=true, or batchformer.keys=plain")
    # The scheme keys act on the BatchFormer's streams only: set without it, they would be
    # silently ignored, so a config that asks for them is refused (as keys=both above).
    scheme = [f"batchformer.{k}={show(getattr(bf, k))}" for k, off in
              (("frozen", False), ("loss_reduction", "mean"), ("head_bn", "joint"))
              if getattr(bf, k) != off]
    if scheme and not bf.enabled:
        them = "them" if len(scheme) > 1 else "it"
        raise ConfigError(f"{', '.join(scheme)} set{'' if len(scheme) > 1 else 's'} how the "
                          f"BatchFormer's streams train, but the BatchFormer is off; set "
                          f"batchformer.enabled=true, or put {them} back to the defaults "
                          f"(frozen=false, loss_reduction=mean, head_bn=joint)")
    check_normalization(cfg.data.mean, cfg.data.std, cfg.data.channels)
    if cfg.train.micro_batch is not None and bf.enabled and bf.version == "v2":
        raise ConfigError(f"train.micro_batch={cfg.train.micro_batch} cannot compute "
                          f"BatchFormerV2's step: it attends across the batch inside the "
                          f"backbone, so each micro-batch would attend over itself only; set "
                          f"batchformer.version=v1, or train.micro_batch=null")
    if cfg.eval.shot_groups[0] < cfg.eval.shot_groups[1]:
        raise ConfigError(f"eval.shot_groups={show(cfg.eval.shot_groups)} is invalid: give "
                          f"[many-shot above, few-shot below] with the first >= the second")
    if isinstance(cfg.data.subset, float) and cfg.data.subset > 1:
        raise ConfigError(f"data.subset={cfg.data.subset} is invalid: a fraction must be in "
                          f"(0, 1], a count must be an integer")
    check_augment({k: getattr(cfg.augment, k) for k in AUGMENT_KEYS})
    if cfg.optim.warmup_epochs >= cfg.train.epochs and cfg.optim.warmup_epochs > 0:
        raise ConfigError(f"optim.warmup_epochs={cfg.optim.warmup_epochs:g} must be less than "
                          f"train.epochs={cfg.train.epochs}")
    if cfg.eval.milestones != sorted(cfg.eval.milestones):
        raise ConfigError(f"eval.milestones={show(cfg.eval.milestones)} must be increasing")
    if not cfg.eval.lr_grid or not cfg.eval.wd_grid or not cfg.eval.knn_ks or not cfg.eval.knn_ts:
        raise ConfigError("eval.lr_grid, eval.wd_grid, eval.knn_ks and eval.knn_ts must not "
                          "be empty")
    if not cfg.run.output_dir.strip():
        raise ConfigError("run.output_dir is empty; give a directory, e.g. runs/my_run")
    check_finetune(cfg)


def check_finetune(cfg: Config) -> None:
    """The cross-key rules of the ``finetune`` section."""
    ft = cfg.finetune
    if ft.label_fraction is not None and ft.subset_file is not None:
        raise ConfigError(f"finetune.label_fraction={ft.label_fraction:g} and "
                          f"finetune.subset_file={show(ft.subset_file)} both choose the labelled "
                          f"images; set one of them to null")
    if ft.warmup_epochs > 0 and ft.warmup_epochs >= ft.epochs:
        raise ConfigError(f"finetune.warmup_epochs={ft.warmup_epochs:g} must be less than "
                          f"finetune.epochs={ft.epochs}")
    if ft.crop_scale[0] > ft.crop_scale[1]:
        raise ConfigError(f"finetune.crop_scale={show(ft.crop_scale)} is invalid: the minimum "
                          f"exceeds the maximum")
    timm_only = [f"finetune.{k}={show(getattr(ft, k))}" for k, off in
                 (("rand_augment", None), ("random_erasing", 0.0)) if getattr(ft, k) != off]
    if timm_only and ft.augment != "timm":
        verb = "belong" if len(timm_only) > 1 else "belongs"
        raise ConfigError(f"{', '.join(timm_only)} {verb} to timm's per-image transform; set "
                          f"finetune.augment=timm (pip install -e '.[timm]'), or put them back "
                          f"(rand_augment=null, random_erasing=0)")
