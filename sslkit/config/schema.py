"""The configuration schema: a tree of frozen dataclasses, one per section of a YAML config.

Every key has a default; numeric bounds and the help text live in the field's metadata
(checked by :mod:`sslkit.config.loading`); the evaluation sections are in
:mod:`sslkit.config.schema_eval`. Keys left ``null`` for "the default" are filled by
:func:`sslkit.methods.resolve.resolved` from the code that owns each fact (the method's paper
defaults, the backbone's depth and feature width, the augmentation preset, the dataset's
statistics). A :class:`Config` is built once and passed down as typed sub-configs, never
mutated.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import yaml

from sslkit.config.fields import _f
from sslkit.config.schema_eval import EvalConfig, FinetuneConfig


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = _f("runs/default", help="run directory (config, metrics, tb/, checkpoints)")
    seed: int = _f(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = _f("auto", help="auto picks CUDA when present")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _f(
        "auto", help="auto: bf16 where the device computes it natively (a GPU with bf16; a "
        "CPU whose oneDNN reports bf16 and where a start-up probe runs it faster than fp32), "
        "else fp32")
    channels_last: bool = _f(False)
    compile: bool = _f(False, help="torch.compile the online and momentum backbones (eager with "
                       "one note line when compilation fails); files keep plain key names")
    num_threads: Optional[int] = _f(None, ge=1, help="torch CPU threads (null: torch default)")
    log_every_steps: int = _f(10, ge=1)
    tensorboard: bool = _f(True)
    aug_grid_every: int = _f(10, ge=0, help="epochs between augmentation grids (0: start only)")
    progress: bool = _f(True, help="tqdm progress bars")
    overwrite: bool = _f(False, help="allow a new run to replace another run's directory")
    dist_timeout_s: int = _f(1800, ge=1, help="torchrun: seconds a process waits for the others "
                             "in one collective before the run ends with one line (a frozen "
                             "or lost process); above the longest wait of the others for rank 0 "
                             "alone (online kNN, checkpoint writes)")


@dataclass(frozen=True)
class DataConfig:
    name: str = _f("fashion_mnist", help="a registered dataset (sslkit.data.register_dataset): "
                   "fashion_mnist, cifar10, cifar100, stl10, imagefolder, webdataset, parquet, "
                   "synthetic")
    root: str = _f("data", help="where the data is: a folder (imagefolder: train/ and val/ "
                   "class folders); webdataset: the training shards, a pattern as WebDataset "
                   "writes it (train-{000000..000146}.tar, lists joined by '::', pipe: commands "
                   "for object stores) or a folder of .tar files; parquet: a folder (the Hugging "
                   "Face layout: train-*.parquet, or a datasets save_to_disk folder), a pattern "
                   "or a file")
    val_root: Optional[str] = _f(None, help="webdataset, parquet: the evaluation split's shards "
                                 "or files, written like data.root (null: the validation files "
                                 "of a data.root folder: val*/validation*)")
    image_column: str = _f("image", help="parquet: the column of the images (structs with "
                           "bytes and path, as the Hugging Face Image feature stores them, or "
                           "binary)")
    label_column: str = _f("label", help="parquet: the column of the integer class labels "
                           "(missing: unlabelled images, pretraining only)")
    image_size: int = _f(32, ge=8, help="side of the augmented views")
    load_size: Optional[int] = _f(None, ge=8, help="image files (imagefolder, webdataset, "
                                  "parquet): side the shorter edge is "
                                  "resized to for evaluation (Resize(256) + CenterCrop(224)), "
                                  "and the square of crop_from=square (null: "
                                  "image_size*256/224)")
    crop_from: Literal["original", "square"] = _f(
        "original", help="image files (imagefolder, webdataset, parquet), pretraining: random "
        "crops of the whole decoded image "
        "(original, the papers' recipe) or of a centre load_size square (square, for "
        "small-image folders)")
    decode_device: Literal["cpu", "cuda"] = _f(
        "cpu", help="image files, crop_from=original: decode JPEGs in the loader workers (cpu) "
        "or in batches on the GPU with nvjpeg (cuda; the workers only read bytes)")
    channels: Literal[1, 3] = _f(3, help="1 or 3; grayscale data is repeated to 3 when 3")
    download: bool = _f(False)
    subset: Union[int, float, None] = _f(None, gt=0, help="count (int) or fraction (0,1]")
    long_tail: Optional[float] = _f(None, ge=1, help="imbalance ratio r of a long-tailed "
                                    "training set (null: off): class i of the sorted classes "
                                    "keeps floor(n_max r^(-i/(C-1))) images (Cao et al. 2019); "
                                    "the test split stays whole")
    num_workers: int = _f(2, ge=0, help="loader processes for decoded-on-the-fly data "
                          "(image folders, shards); at most the CPU cores available are "
                          "started")
    class_list: Optional[str] = _f(None, help="imagefolder: file naming the classes to use")
    skip_corrupt: bool = _f(False, help="image files (imagefolder, webdataset, parquet): skip "
                            "undecodable images (logs a count)")
    mean: Optional[list[float]] = _f(None, length=None)
    std: Optional[list[float]] = _f(None, gt=0)
    synthetic_classes: int = _f(10, ge=2)
    synthetic_train: int = _f(2000, ge=1)
    synthetic_test: int = _f(500, ge=1)


@dataclass(frozen=True)
class AugmentConfig:
    """null means "the preset's value"; a 2-list for blur_p/solarize_p gives (view1, view2)."""
    preset: str = _f("auto", help="auto (the method's preset, its _small variant up to 64 px) "
                     "or one of sslkit.augment.PRESETS: mocov2, mocov3, mocov2_small, "
                     "mocov3_small")
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


# sslkit's own backbones (sslkit.models.backbones.ARCHS); "timm/<name>" names a timm model.
BUILTIN_BACKBONES = ("resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small", "vit_base")
TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = _f("resnet18", help="resnet18, resnet34, resnet50, vit_tiny, vit_small, "
                       "vit_base, or timm/<name>: a timm model (pip install -e '.[timm]'; "
                       "the options below are sslkit's and do not apply to it)")
    cifar_stem: bool = _f(False, help="3x3 stride-1 conv1, no maxpool (for 28-32 px images)")
    maxpool: Optional[bool] = _f(None, help="ResNet stem max-pool (null: kept unless "
                                 "cifar_stem; true with cifar_stem halves the maps, ~2.5x faster)")
    width: int = _f(64, ge=1, help="ResNet base width (64 = torchvision)")
    zero_init_residual: bool = _f(False)
    patch_size: int = _f(16, ge=1, help="ViT patch size")
    vit_depth: Optional[int] = _f(None, ge=1, help="ViT depth override (null: the model's)")
    freeze_patch_embed: bool = _f(True, help="ViT: frozen random patch projection (MoCo-v3)")
    grad_checkpointing: bool = _f(False, help="activation checkpointing of the online backbone's "
                                  "ViT blocks / ResNet stages (timm: set_grad_checkpointing): the "
                                  "same gradients, less memory, a second forward of each block")


@dataclass(frozen=True)
class MethodConfig:
    """null values are resolved to the method's paper defaults
    (:func:`sslkit.methods.resolve.resolved`)."""
    name: str = _f("mocov2", help="a registered method (sslkit.methods.register): mocov2, "
                   "mocov3")
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
        "features through the same BatchFormer (no gradient), the loss combines the 4 query x "
        "key stream pairings (loss_reduction) and MoCo-v2 enqueues both key streams")
    frozen: bool = _f(False, help="keep the BatchFormer at its random initialisation: applied "
                      "in every stream as usual (dropout on in training), but no gradient, no "
                      "optimizer group (lr_scale and weight_decay do not apply) and no EMA; "
                      "saved in checkpoints. The authors' MoCo-v3 code runs it this way")
    loss_reduction: Literal["mean", "sum"] = _f(
        "mean", help="how the query stream x key stream terms of each MoCo direction combine: "
        "mean (MoCo's loss scale) or sum (MoCo-v3 with keys=both: the authors' 8-term loss, "
        "4x the mean; keys=plain: 2x the mean; MoCo-v2: 2x or 4x the mean, where the "
        "authors' own MoCo-v2 takes the mean)")
    head_bn: Literal["joint", "per_stream"] = _f(
        "joint", help="BatchNorm of the heads on the 2B rows of both streams: joint (one set "
        "of batch statistics over both) or per_stream (the plain and BatchFormer halves "
        "normalised on their own; running statistics from the plain half only), so that the "
        "plain stream computes exactly the network without BatchFormer")


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
    max_steps: Optional[int] = _f(None, ge=1, help="null: no cap; a cap ends the run "
                                  "and its schedule (warmup, cosine) there")
    checkpoint_every_steps: Optional[int] = _f(None, ge=1, help="null: once per epoch")
    checkpoint_every_minutes: Optional[float] = _f(
        None, gt=0, help="also a checkpoint when this much wall-clock time has passed since the "
        "last one (rank 0's clock; every process follows); bounds the work a kill -9 loses "
        "(null: off)")
    nan_policy: Literal["stop", "skip"] = _f("stop")
    micro_batch: Optional[int] = _f(
        None, ge=1, help="null: the whole per-process batch at once; N: the same step N images at "
        "a time (gradient caching; MoCo-v2 without BatchFormer accumulates plainly); the "
        "backbone's BatchNorm then normalises each micro-batch (docs/pretraining.md)")
    on_collapse: Literal["warn", "stop"] = _f(
        "warn", help="when a collapse signal (rankme, embed_std) falls under its threshold: "
        "one warning line, or a checkpoint and a stop with exit code 4 (docs/monitoring.md)")
    spike_policy: Literal["none", "rollback"] = _f(
        "none", help="rollback: a loss spike (non-finite, or above spike_factor x the median "
        "of the last spike_window steps) restores the last good state kept in memory and "
        "multiplies the LR by spike_lr_factor for the rest of the run")
    spike_factor: float = _f(2.0, gt=1, help="a finite loss above this times the median of "
                             "the last spike_window steps is a spike")
    spike_window: int = _f(50, ge=2, help="steps in the median; also the spacing of the "
                           "in-memory snapshots a rollback restores")
    spike_lr_factor: float = _f(0.5, gt=0, le=1, help="the LR multiplier of each rollback")
    spike_retries: int = _f(3, ge=1, help="rollbacks without getting past the spike's step "
                            "before the run stops with one line")


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
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

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
