"""The evaluation sections of the config schema: ``eval`` (kNN, the linear probe, the online
monitors) and ``finetune`` (``run_finetune.py``); the rest is :mod:`sslkit.config.schema`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from sslkit.config.fields import _f


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
class FinetuneConfig:
    """End-to-end fine-tuning (``run_finetune.py``): the whole backbone and a linear head.
    The defaults are SimCLR's semi-supervised protocol for ResNets (Chen et al. 2020, B.5);
    ``configs/imagenet_finetune_vit*.yaml`` set MoCo-v3's (DeiT's) for ViTs."""
    epochs: int = _f(30, ge=1)
    batch_size: int = _f(256, ge=1, help="global batch (split over processes)")
    lr: float = _f(0.05, gt=0, help="base LR for a global batch of 256 (linear scaling)")
    weight_decay: float = _f(0.0, ge=0)
    optimizer: Literal["sgd", "adamw"] = _f("sgd")
    momentum: float = _f(0.9, ge=0, lt=1, help="SGD momentum")
    nesterov: bool = _f(True, help="SGD with Nesterov momentum (SimCLR, BYOL)")
    betas: list[float] = _f([0.9, 0.999], ge=0, lt=1, length=2, help="AdamW betas")
    warmup_epochs: float = _f(0.0, ge=0)
    schedule: Literal["cosine", "constant"] = _f("cosine", help="set per step after warmup")
    min_lr: float = _f(0.0, ge=0, help="the cosine's floor (absolute LR)")
    exclude_bias_norm: bool = _f(False, help="no weight decay on biases, norm parameters, "
                                 "the class token and the position embedding (timm, DeiT)")
    layer_decay: float = _f(1.0, gt=0, le=1, help="ViT layer-wise LR decay (BEiT, MAE): the "
                            "LR of layer i (0: patch embedding, class token, position "
                            "embedding; j+1: block j; L+1: final norm and head) is scaled by "
                            "layer_decay^(L+1-i); 1: off")
    grad_clip: Optional[float] = _f(None, gt=0, help="max gradient norm (null: off)")
    label_smoothing: float = _f(0.0, ge=0, lt=1)
    mixup: float = _f(0.0, ge=0, help="mixup alpha (timm.data.Mixup; 0: off)")
    cutmix: float = _f(0.0, ge=0, help="cutmix alpha (timm.data.Mixup; 0: off)")
    mixup_prob: float = _f(1.0, ge=0, le=1, help="probability of mixup or cutmix per batch")
    mixup_switch_prob: float = _f(0.5, ge=0, le=1, help="probability of cutmix when both")
    augment: Literal["crop_flip", "timm"] = _f(
        "crop_flip", help="crop_flip: random crop + flip on the device (above 64 px a random-"
        "resized crop of crop_scale, at 28-64 px a 4 px padded crop: the light preset); timm: "
        "timm's per-image training transform in the loader (random-resized crop of the whole "
        "image, flip, rand_augment, random_erasing; 28-32 px images: the padded crop)")
    crop_scale: list[float] = _f([0.08, 1.0], gt=0, le=1, length=2)
    flip_p: float = _f(0.5, ge=0, le=1, help="horizontal flip probability")
    interpolation: Literal["bilinear", "bicubic"] = _f("bilinear", help="of the resized crop")
    rand_augment: Optional[str] = _f(None, help="augment=timm: timm's RandAugment string, "
                                     "e.g. rand-m9-mstd0.5-inc1 (DeiT); null: off")
    random_erasing: float = _f(0.0, ge=0, le=1, help="augment=timm: random erasing "
                               "probability (pixel mode)")
    drop_path: float = _f(0.0, ge=0, lt=1, help="ViT stochastic depth: the rate grows "
                          "linearly to this over the blocks (timm's DropPath)")
    head_init_std: float = _f(0.01, ge=0, help="the linear head's weight ~ N(0, std^2), bias "
                              "0 (0: zeros, as SimCLR)")
    sync_bn: bool = _f(False, help="SyncBatchNorm under torchrun on CUDA (SimCLR: global BN)")
    label_fraction: Optional[float] = _f(None, gt=0, le=1, help="train on this fraction of "
                                         "the labelled training images: class-balanced (the "
                                         "same count per class, at least one), seeded by "
                                         "run.seed (null: all); run_lincls takes it too")
    subset_file: Optional[str] = _f(None, help="train on the images this file names, one "
                                    "file name a line (SimCLR's 1percent.txt / "
                                    "10percent.txt), matched against an image folder; "
                                    "run_lincls takes it too")
    eval_every: int = _f(1, ge=0, help="epochs between test evaluations (0: at the end only)")
    checkpoint_every_steps: Optional[int] = _f(None, ge=1, help="null: once per epoch")
