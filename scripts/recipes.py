#!/usr/bin/env python3
"""Regenerate docs/recipes.md: every ImageNet and CIFAR-10 recipe of configs/, resolved by
sslkit, next to the official value of each parameter and where that value was read.

    python scripts/recipes.py            # rewrite docs/recipes.md
    python scripts/recipes.py --check    # exit 1 if docs/recipes.md is stale

The official values below are plain data, each with its repository and file. The sslkit
column is read from the code under test: ``sslkit.config.load`` then
``sslkit.methods.resolve.resolved`` (nulls filled with the method's defaults), ``sslkit.augment.resolve_params`` (the preset plus the overrides),
``sslkit.train.optim`` (the LR scaling and schedule) and the method built by
``sslkit.methods.build_method`` on the meta device (heads, stem, BatchFormer: structure only,
no memory). A row whose values differ must be listed in the recipe's ``deliberate`` table with
the sslkit value it excuses and the reason; tests/test_recipes.py fails otherwise, and when
this page is stale.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from sslkit import config as sslconfig  # noqa: E402
from sslkit.augment import OVERRIDE_KEYS, resolve_params  # noqa: E402
from sslkit.data.info import normalization, resize_side  # noqa: E402
from sslkit.methods import build_method  # noqa: E402
from sslkit.train.optim import linear_scaled, lr_factor, scaled_lr  # noqa: E402
from sslkit.methods.resolve import resolved  # noqa: E402

PAGE = ROOT / "docs" / "recipes.md"

# --------------------------------------------------------------------------- sources
MOCO = "facebookresearch/moco"              # read at 78b69ca (= 7397dfe, the last with files)
COLAB = "facebookresearch/moco colab/moco_cifar10_demo.ipynb"   # branch colab-notebook, f736491
V3 = "facebookresearch/moco-v3"             # c349e6e
BF = "zhihou7/BatchFormer"                  # 305efaa
SOLO = "vturrisi/solo-learn"                # 9187ea3 (the files used last changed in 3b357ee)
TV = "torchvision resnet"                   # the official scripts build torchvision models

SOURCES = [
    (MOCO, "`78b69ca` (2020-08-20); `main` now has an empty tree, and the last commit with "
     "files, `7397dfe`, has the same code, reformatted", "MoCo-v2 on ImageNet: `main_moco.py`, "
     "`main_lincls.py`, `moco/builder.py`, `README.md`"),
    (COLAB.split(" ")[0], "`f736491`, branch `colab-notebook`",
     "the MoCo CIFAR-10 demo `colab/moco_cifar10_demo.ipynb` (cell numbers below count from 0)"),
    (V3, "`c349e6e` (2021-11-25, the last commit)", "MoCo-v3: `main_moco.py`, "
     "`main_lincls.py`, `moco/builder.py`, `moco/optimizer.py`, `vits.py`, `CONFIG.md`"),
    (BF, "`305efaa` (2023-05-04, the last commit); history read back to `60066b9` (2022-03-24, "
     "the MoCo code added), through `cc7a060` (the commit the README links for its MoCo-v3 "
     "model), `c906e92` (2022-11-30, the MoCo-v3 loss fixed) and `6f89e22` (2022-12-04, the "
     "README's 69.6 -> 70.1)", "the BatchFormer authors' MoCo code: `moco-v3/moco/builder.py` "
     "(MoCo-v3), `moco-v3/moco/builder_v2.py` (MoCo-v2), `moco-v3/main_moco.py`; BatchFormerV2 "
     "in DeiT: `batchformer-v2/deit_share/` (`main.py`, `optimizer.py`, `bt.py`, `engine.py`, "
     "`README.md`)"),
    (SOLO, "`9187ea3`", "MoCo-v3 has no official CIFAR recipe; solo-learn's "
     "`scripts/pretrain/cifar/mocov3.yaml` is the reference for the CIFAR MoCo-v3 recipes"),
]


@dataclasses.dataclass(frozen=True)
class Official:
    """The official value of one parameter and where it was read."""
    value: Any
    source: str
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Deliberate:
    """A known difference: the sslkit value it excuses and why sslkit differs."""
    sslkit: Any
    reason: str


# --------------------------------------------------------------------------- sslkit side
class Resolved:
    """A config resolved by sslkit, with the method it builds (on the meta device, lazily)."""

    def __init__(self, cfg: sslconfig.Config):
        self.cfg = cfg = resolved(cfg)
        self._model: Optional[nn.Module] = None
        overrides = {k: getattr(cfg.augment, k) for k in OVERRIDE_KEYS}
        self.aug = resolve_params(self.cfg.augment.preset, **overrides)

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            with torch.device("meta"):  # shapes and flags only: no memory, no init cost
                self._model = build_method(self.cfg)
        return self._model


# Behaviour fixed by sslkit's code rather than by a config key (the module says where).
SSLKIT_EMA_UPDATE = "after the optimizer step"              # sslkit/train/engine.py Trainer._step
SSLKIT_BF_LOSS = "mean of the plain and BatchFormer streams, plain keys"  # methods/streams.py
SSLKIT_BF_LOSS_BOTH = "mean of the 4 query x key stream pairings"  # batchformer.keys: both
SSLKIT_BF_TRAINED = "trained; not in the momentum branch"
SSLKIT_BF_AUTOCAST = "the run's autocast precision"          # BatchFormer (v1): no override
SSLKIT_BFV2_FP32 = "fp32, autocast off around it"            # models/batchformer.py mix_tokens
BF_FROZEN_OPTIM = "none: frozen, never updated"
BF_JOINT_BOTH = "both streams together (2B rows), in the momentum projector too"
BF_JOINT_PLAIN = ("both streams together (2B rows) in the online heads; the momentum "
                  "projector sees the B plain keys")
BF_PER_STREAM = "each stream on its own (B rows); running statistics from the plain stream"
SSLKIT_KNN_FEATURES = "backbone output"                      # sslkit/train/online_probe.py online_knn
SSLKIT_PROBE_LR_RULE = "linear"                              # linear_eval/standard.py


def _stem(r: Resolved) -> str:
    bb = r.model.backbone
    c = bb.conv1
    pool = "no max-pool" if isinstance(bb.maxpool, nn.Identity) else "max-pool"
    return (f"conv {c.kernel_size[0]}x{c.kernel_size[1]} stride {c.stride[0]} "
            f"padding {c.padding[0]}, {pool}")


def _vit(r: Resolved) -> str:
    bb = r.model.backbone
    heads = bb.encoder.layers[0].self_attention.num_heads
    return (f"patch {bb.patch_size}, width {bb.hidden_dim}, depth {len(bb.encoder.layers)}, "
            f"{heads} heads")


def _linears(seq: nn.Module) -> list[nn.Linear]:
    return [m for m in seq.modules() if isinstance(m, nn.Linear)]


def _mlp_dims(seq: nn.Module) -> str:
    lin = _linears(seq)
    return "-".join(str(d) for d in [lin[0].in_features] + [m.out_features for m in lin])


def _mlp_bn(seq: nn.Module) -> str:
    """Where the MLP has BatchNorm: after hidden Linear layers, after the last one."""
    mods = list(seq.children())
    lin_at = [i for i, m in enumerate(mods) if isinstance(m, nn.Linear)]
    is_bn = lambda m: isinstance(m, nn.modules.batchnorm._BatchNorm)  # noqa: E731
    hidden = any(i + 1 < len(mods) and is_bn(mods[i + 1]) for i in lin_at[:-1])
    after = mods[lin_at[-1] + 1:]
    last = next((m for m in after if is_bn(m)), None)
    parts = ["hidden BN"] if hidden else []
    if last is not None:
        parts.append("last BN" + ("" if last.affine else " without affine"))
    return ", ".join(parts) or "none"


def _head_bias(r: Resolved) -> bool:
    heads = [r.model.projector] + ([r.model.predictor] if hasattr(r.model, "predictor") else [])
    return all(m.bias is not None for h in heads for m in _linears(h))


def _bn_kind(r: Resolved) -> str:
    m, model = r.cfg.method, r.model
    if m.sync_bn:
        return "SyncBN, whole model"
    if getattr(model, "shuffle_bn", False):
        return f"shuffle-BN, BN statistics over {r.cfg.train.batch_size // model.bn_splits} images"
    return "BN per process"


def _optimizer(r: Resolved) -> str:
    o = r.cfg.optim
    if o.name == "sgd":
        s = f"SGD, momentum {o.momentum:g}"
    elif o.name == "lars":
        s = f"LARS, trust coefficient {o.lars_eta:g}, momentum {o.momentum:g}"
    else:
        s = f"AdamW, betas ({o.betas[0]:g}, {o.betas[1]:g})"
    return s + (f", gradient clipping {o.grad_clip:g}" if o.grad_clip is not None else "")


def _schedule(r: Resolved) -> tuple:
    """(shape, granularity, final LR) from sslkit.train.optim.lr_factor: per step if the LR moves
    between two steps of one epoch after the warmup."""
    o, spe = r.cfg.optim, 10
    total, warm = r.cfg.train.epochs * spe, int(round(o.warmup_epochs * spe))
    s = warm + spe  # the first step of the epoch after the warmup
    moves = lr_factor(s, total, warm, o.schedule) != lr_factor(s + 1, total, warm, o.schedule)
    return (o.schedule, "step" if moves else "epoch", o.min_lr)


def _bf_module(r: Resolved) -> nn.Module:
    """The BatchFormer (v1), or the first of BatchFormerV2's token-level modules."""
    bf = r.model.batchformer
    return bf.blocks[0] if hasattr(bf, "blocks") else bf


def _bf_place(r: Resolved) -> str:
    bf, b = r.model.batchformer, r.cfg.batchformer
    if not hasattr(bf, "blocks"):
        return "between the pooled backbone features and the projector"
    depth = len(r.model.backbone.encoder.layers)
    return (f"on every token after block(s) {list(bf.insert_after)} of {depth}, "
            f"{'one shared module' if b.shared else 'one module per point'}")


def _bf_optim(r: Resolved) -> str:
    b = r.cfg.batchformer
    if b.frozen:
        return BF_FROZEN_OPTIM
    wd = r.cfg.optim.weight_decay if b.weight_decay is None else b.weight_decay
    if b.lr_scale == 1 and wd == r.cfg.optim.weight_decay:
        return "the optimizer's LR and weight decay"
    return f"LR x {b.lr_scale:g}, weight decay {wd:g}"


def _bf_loss(r: Resolved) -> str:
    """The reduction of sslkit/methods/streams.py over the query x key stream terms."""
    b = r.cfg.batchformer
    if b.loss_reduction == "mean":
        return SSLKIT_BF_LOSS if b.keys == "plain" else SSLKIT_BF_LOSS_BOTH
    pairings = 2 * (2 if b.keys == "both" else 1)
    if r.cfg.method.name == "mocov3":
        return (f"sum of the {2 * pairings} query x key stream terms ({pairings} pairings x 2 "
                f"directions)")
    directions = 2 if r.cfg.method.symmetric else 1
    return f"sum of the {pairings * directions} query x key stream terms"


def _bf_head_bn(r: Resolved) -> str:
    if r.cfg.batchformer.head_bn == "per_stream":
        return BF_PER_STREAM
    return BF_JOINT_BOTH if r.cfg.batchformer.keys == "both" else BF_JOINT_PLAIN


def _bf_precision(r: Resolved) -> str:
    return SSLKIT_BFV2_FP32 if hasattr(r.model.batchformer, "blocks") else SSLKIT_BF_AUTOCAST


def _bf_layer(r: Resolved) -> str:
    layers = _bf_module(r).encoder.layers
    lay = layers[0]
    act = "ReLU" if lay.activation_relu_or_gelu == 1 else "GELU"
    return (f"{len(layers)} x TransformerEncoderLayer(d={lay.self_attn.embed_dim}, "
            f"heads={lay.self_attn.num_heads}, ffn={lay.linear1.out_features}, "
            f"dropout={lay.dropout.p:g}, {act}, {'pre' if lay.norm_first else 'post'}-norm)")


def _bf_training(r: Resolved) -> str:
    model = r.model
    trained = all(p.requires_grad for p in model.batchformer.parameters())
    return (f"{'trained' if trained else 'frozen at its random init'}; "
            f"{'the same module also in' if model.keys_both else 'not in'} the momentum branch")


def _crop_input(r: Resolved) -> str:
    d = r.cfg.data
    if d.name == "imagefolder" and d.crop_from == "square":
        side = d.load_size or resize_side(d.image_size)
        return f"the centre {side}x{side} square"
    return "the full image"


def _eval_schedule(r: Resolved) -> tuple:
    e = r.cfg.eval
    if e.schedule == "cosine":
        return ("cosine",)
    return ("step", tuple(round(m * e.epochs) for m in e.milestones))


# --------------------------------------------------------------------------- formatting
def fmt(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(fmt(x) for x in v) + ")"
    return str(v)


def _fmt_lr_rule(v: tuple) -> str:
    return f"{v[0]:g} x batch/256" if v[1] == "linear" else f"{v[0]:g}, not scaled"


def _fmt_ema(v: tuple) -> str:
    return f"{v[0]:g} -> 1, cosine" if v[1] == "cosine" else f"{v[0]:g}, constant"


def _fmt_schedule(v: tuple) -> str:
    return f"{v[0]} to {v[2]:g}, set per {v[1]}"


def _fmt_eval_schedule(v: tuple) -> str:
    if v[0] == "cosine":
        return "cosine, per epoch"
    return "x0.1 at epochs " + ", ".join(str(x) for x in v[1])


def _fmt_norm(v: tuple) -> str:
    return f"mean {fmt(v[0])}, std {fmt(v[1])}"


def _fmt_knn(v: Optional[tuple]) -> str:
    return "none" if v is None else f"k={v[0]}, T={v[1]:g}, on the {v[2]}"


# --------------------------------------------------------------------------- parameters
@dataclasses.dataclass(frozen=True)
class Param:
    key: str
    label: str
    probe: Callable[[Resolved], Any]
    applies: Callable[[Resolved], bool] = lambda r: True
    show: Callable[[Any], str] = fmt


def _resnet(r: Resolved) -> bool:
    return r.cfg.model.backbone.startswith("resnet")


def _vit_bb(r: Resolved) -> bool:
    return r.cfg.model.backbone.startswith("vit")


def _v2(r: Resolved) -> bool:
    return r.cfg.method.name == "mocov2"


def _v3(r: Resolved) -> bool:
    return r.cfg.method.name == "mocov3"


def _bf(r: Resolved) -> bool:
    return r.cfg.batchformer.enabled


def _blur(r: Resolved) -> bool:
    return any(p > 0 for p in r.aug["blur_p"])


def _bf_heads_bn(r: Resolved) -> bool:
    """A BatchFormer and BatchNorm in the heads (else head_bn changes nothing)."""
    heads = [r.model.projector] + ([r.model.predictor] if hasattr(r.model, "predictor") else [])
    return _bf(r) and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                          for h in heads for m in h.modules())


PARAMS: list[Param] = [
    # model
    Param("backbone", "backbone", lambda r: r.cfg.model.backbone),
    Param("stem", "ResNet stem", _stem, _resnet),
    Param("vit", "ViT size", _vit, _vit_bb),
    Param("patch_embed_trained", "patch projection trained", lambda r: bool(
        r.model.backbone.conv_proj.weight.requires_grad), _vit_bb),
    Param("pos_embed_trained", "position embedding trained", lambda r: bool(
        r.model.backbone.encoder.pos_embedding.requires_grad), _vit_bb),
    Param("zero_init_residual", "zero-init last BN of each residual branch",
          lambda r: r.cfg.model.zero_init_residual, _resnet),
    Param("projector", "projector (layer widths)", lambda r: _mlp_dims(r.model.projector)),
    Param("projector_bn", "projector BN", lambda r: _mlp_bn(r.model.projector)),
    Param("predictor", "predictor (layer widths)", lambda r: _mlp_dims(r.model.predictor), _v3),
    Param("predictor_bn", "predictor BN", lambda r: _mlp_bn(r.model.predictor), _v3),
    Param("head_bias", "biases in the head Linear layers", _head_bias),
    Param("bn", "BatchNorm across the batch", _bn_kind),
    # BatchFormer
    Param("bf_layer", "BatchFormer layer", _bf_layer, _bf),
    Param("bf_place", "BatchFormer position", _bf_place, _bf),
    Param("bf_optim", "BatchFormer parameter group", _bf_optim, _bf),
    Param("bf_scope", "BatchFormer attends over", lambda r: (
        "the per-process batch" if r.cfg.batchformer.scope == "local"
        else "the gathered global batch"), _bf),
    Param("bf_training", "BatchFormer training", _bf_training, _bf),
    Param("bf_loss", "BatchFormer loss", _bf_loss, _bf),
    Param("bf_head_bn", "BatchNorm of the heads over the streams", _bf_head_bn, _bf_heads_bn),
    Param("bf_precision", "BatchFormer precision under mixed precision", _bf_precision, _bf),
    # optimisation
    Param("optimizer", "optimizer", _optimizer),
    Param("lr_rule", "base LR and scaling rule", lambda r: (r.cfg.optim.lr, r.cfg.optim.lr_scaling),
          show=_fmt_lr_rule),
    Param("lr", "LR at the recipe's batch",
          lambda r: scaled_lr(r.cfg.optim, r.cfg.train.batch_size)),
    Param("weight_decay", "weight decay", lambda r: r.cfg.optim.weight_decay),
    Param("wd_bias_norm", "weight decay on biases and norm parameters", lambda r: not (
        r.cfg.optim.name == "lars" or r.cfg.optim.exclude_bias_norm)),
    Param("warmup", "warmup epochs", lambda r: r.cfg.optim.warmup_epochs),
    Param("schedule", "LR schedule", _schedule, show=_fmt_schedule),
    Param("epochs", "epochs", lambda r: r.cfg.train.epochs),
    Param("batch", "batch (global)", lambda r: r.cfg.train.batch_size),
    Param("precision", "precision", lambda r: {
        "auto": "bf16 autocast where native (GPU, CPU), else fp32", "bf16": "bf16 autocast",
        "fp16": "fp16 autocast + GradScaler", "fp32": "fp32"}[r.cfg.run.precision]),
    # method
    Param("temperature", "temperature", lambda r: r.cfg.method.temperature),
    Param("ema", "EMA momentum", lambda r: (r.cfg.method.momentum, r.cfg.method.momentum_schedule),
          show=_fmt_ema),
    Param("ema_update", "EMA update of the momentum encoder", lambda r: SSLKIT_EMA_UPDATE),
    Param("queue", "queue size K", lambda r: r.cfg.method.queue_size, _v2),
    Param("loss", "loss", lambda r: "symmetric" if r.cfg.method.symmetric else "asymmetric", _v2),
    # augmentation
    Param("image_size", "view size", lambda r: r.cfg.data.image_size),
    Param("crop_input", "random crops are taken from", _crop_input),
    Param("crop_scale", "crop scale", lambda r: r.aug["crop_scale"]),
    Param("crop_ratio", "crop aspect ratio", lambda r: r.aug["crop_ratio"]),
    Param("jitter", "colour jitter (brightness, contrast, saturation, hue)", lambda r: (
        r.aug["brightness"], r.aug["contrast"], r.aug["saturation"], r.aug["hue"])),
    Param("jitter_p", "colour jitter probability", lambda r: r.aug["jitter_p"]),
    Param("grayscale_p", "grayscale probability", lambda r: r.aug["grayscale_p"]),
    Param("blur_p", "blur probability (view 1, view 2)", lambda r: r.aug["blur_p"]),
    Param("blur_sigma", "blur sigma", lambda r: r.aug["blur_sigma"], _blur),
    Param("solarize_p", "solarize probability (view 1, view 2)", lambda r: r.aug["solarize_p"]),
    Param("flip_p", "horizontal flip probability", lambda r: r.aug["flip_p"]),
    Param("normalize", "normalisation", lambda r: normalization(
        r.cfg.data.name, r.cfg.data.channels, r.cfg.data.mean, r.cfg.data.std), show=_fmt_norm),
    Param("knn", "online kNN monitor", lambda r: (
        r.cfg.eval.knn_k, r.cfg.eval.knn_t, SSLKIT_KNN_FEATURES) if r.cfg.eval.knn_every else None,
        show=_fmt_knn),
    # linear evaluation
    Param("eval_lr_rule", "linear eval: base LR and scaling rule", lambda r: (
        r.cfg.eval.lr, SSLKIT_PROBE_LR_RULE), show=_fmt_lr_rule),
    Param("eval_lr", "linear eval: LR at its batch",
          lambda r: linear_scaled(r.cfg.eval.lr, r.cfg.eval.batch_size)),
    Param("eval_batch", "linear eval: batch", lambda r: r.cfg.eval.batch_size),
    Param("eval_epochs", "linear eval: epochs", lambda r: r.cfg.eval.epochs),
    Param("eval_schedule", "linear eval: LR schedule", _eval_schedule, show=_fmt_eval_schedule),
    Param("eval_wd", "linear eval: weight decay", lambda r: r.cfg.eval.weight_decay),
]
PARAM = {p.key: p for p in PARAMS}

# --------------------------------------------------------------------------- official values
IMAGENET_NORM = Official(((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                         f"{MOCO} main_moco.py; {V3} main_moco.py")
MOCO_EMA_IN_FORWARD = "inside forward, before the key forward"

# MoCo-v2, ResNet-50, 200 epochs: the v1 defaults of main_moco.py plus the README's v2 flags
# `--mlp --moco-t 0.2 --aug-plus --cos`, run as the README's `--lr 0.03 --batch-size 256` on 8 GPUs.
MOCOV2_IMAGENET: dict[str, Official] = {
    "backbone": Official("resnet50", f"{MOCO} main_moco.py", "`-a resnet50`"),
    "stem": Official("conv 7x7 stride 2 padding 3, max-pool", f"{MOCO} main_moco.py ({TV})"),
    "zero_init_residual": Official(False, f"{MOCO} main_moco.py",
                                   "torchvision's default initialisation"),
    "projector": Official("2048-2048-128", f"{MOCO} moco/builder.py", "`--mlp`, `--moco-dim 128`"),
    "projector_bn": Official("none", f"{MOCO} moco/builder.py", "Linear-ReLU-Linear"),
    "head_bias": Official(True, f"{MOCO} moco/builder.py", "nn.Linear defaults"),
    "bn": Official("shuffle-BN, BN statistics over 32 images", f"{MOCO} moco/builder.py; README.md",
                   "the key batch is shuffled across 8 GPUs of 32 images (batch 256), each GPU "
                   "with its own BN statistics"),
    "optimizer": Official("SGD, momentum 0.9", f"{MOCO} main_moco.py"),
    "lr_rule": Official((0.03, "none"), f"{MOCO} main_moco.py; README.md",
                        "the README scales it by hand: `--lr 0.015 --batch-size 128`"),
    "lr": Official(0.03, f"{MOCO} README.md", "`--lr 0.03 --batch-size 256`"),
    "weight_decay": Official(1e-4, f"{MOCO} main_moco.py"),
    "wd_bias_norm": Official(True, f"{MOCO} main_moco.py", "SGD over `model.parameters()`"),
    "warmup": Official(0.0, f"{MOCO} main_moco.py", "no warmup"),
    "schedule": Official(("cosine", "epoch", 0.0), f"{MOCO} main_moco.py", "`--cos`"),
    "epochs": Official(200, f"{MOCO} main_moco.py"),
    "batch": Official(256, f"{MOCO} main_moco.py; README.md"),
    "precision": Official("fp32", f"{MOCO} main_moco.py", "no autocast"),
    "temperature": Official(0.2, f"{MOCO} README.md", "`--moco-t 0.2` (v1: 0.07)"),
    "ema": Official((0.999, "constant"), f"{MOCO} main_moco.py"),
    "ema_update": Official(MOCO_EMA_IN_FORWARD, f"{MOCO} moco/builder.py"),
    "queue": Official(65536, f"{MOCO} main_moco.py"),
    "loss": Official("asymmetric", f"{MOCO} moco/builder.py"),
    "image_size": Official(224, f"{MOCO} main_moco.py"),
    "crop_input": Official("the full image", f"{MOCO} main_moco.py",
                           "ImageFolder + RandomResizedCrop"),
    "crop_scale": Official((0.2, 1.0), f"{MOCO} main_moco.py", "aug+"),
    "crop_ratio": Official((3 / 4, 4 / 3), f"{MOCO} main_moco.py", "torchvision's default"),
    "jitter": Official((0.4, 0.4, 0.4, 0.1), f"{MOCO} main_moco.py"),
    "jitter_p": Official(0.8, f"{MOCO} main_moco.py"),
    "grayscale_p": Official(0.2, f"{MOCO} main_moco.py"),
    "blur_p": Official((0.5, 0.5), f"{MOCO} main_moco.py", "the same transform for both views"),
    "blur_sigma": Official((0.1, 2.0), f"{MOCO} main_moco.py; moco/loader.py"),
    "solarize_p": Official((0.0, 0.0), f"{MOCO} main_moco.py"),
    "flip_p": Official(0.5, f"{MOCO} main_moco.py"),
    "normalize": IMAGENET_NORM,
    "knn": Official(None, f"{MOCO} main_moco.py", "no kNN monitor"),
    "eval_lr_rule": Official((30.0, "none"), f"{MOCO} main_lincls.py"),
    "eval_lr": Official(30.0, f"{MOCO} main_lincls.py; README.md"),
    "eval_batch": Official(256, f"{MOCO} main_lincls.py"),
    "eval_epochs": Official(100, f"{MOCO} main_lincls.py"),
    "eval_schedule": Official(("step", (60, 80)), f"{MOCO} main_lincls.py"),
    "eval_wd": Official(0.0, f"{MOCO} main_lincls.py"),
}

# MoCo-v3, ResNet-50, 100 epochs: main_moco.py defaults with CONFIG.md's
# `--moco-m-cos --crop-min=.2`, batch 4096 on 16 GPUs.
MOCOV3_R50: dict[str, Official] = {
    "backbone": Official("resnet50", f"{V3} main_moco.py"),
    "stem": Official("conv 7x7 stride 2 padding 3, max-pool", f"{V3} main_moco.py ({TV})"),
    "zero_init_residual": Official(True, f"{V3} main_moco.py", "`zero_init_residual=True`"),
    "projector": Official("2048-4096-256", f"{V3} moco/builder.py; main_moco.py",
                          "`--moco-mlp-dim 4096 --moco-dim 256`"),
    "projector_bn": Official("hidden BN, last BN without affine", f"{V3} moco/builder.py"),
    "predictor": Official("256-4096-256", f"{V3} moco/builder.py"),
    "predictor_bn": Official("hidden BN", f"{V3} moco/builder.py", "no last BN for the ResNet"),
    "head_bias": Official(False, f"{V3} moco/builder.py", "`nn.Linear(dim1, dim2, bias=False)`"),
    "bn": Official("SyncBN, whole model", f"{V3} main_moco.py", "`convert_sync_batchnorm(model)`"),
    "optimizer": Official("LARS, trust coefficient 0.001, momentum 0.9",
                          f"{V3} moco/optimizer.py; main_moco.py"),
    "lr_rule": Official((0.6, "linear"), f"{V3} main_moco.py", "`args.lr * args.batch_size / 256`"),
    "lr": Official(9.6, f"{V3} main_moco.py; CONFIG.md", "0.6 x 4096/256"),
    "weight_decay": Official(1e-6, f"{V3} main_moco.py"),
    "wd_bias_norm": Official(False, f"{V3} moco/optimizer.py",
                             "LARS: no weight decay or adaptation for parameters with ndim <= 1"),
    "warmup": Official(10.0, f"{V3} main_moco.py"),
    "schedule": Official(("cosine", "step", 0.0), f"{V3} main_moco.py",
                         "`adjust_learning_rate(..., epoch + i / iters_per_epoch)`"),
    "epochs": Official(100, f"{V3} main_moco.py; CONFIG.md"),
    "batch": Official(4096, f"{V3} main_moco.py; CONFIG.md"),
    "precision": Official("fp16 autocast + GradScaler", f"{V3} main_moco.py"),
    "temperature": Official(1.0, f"{V3} main_moco.py; CONFIG.md",
                            "the ResNet commands keep `--moco-t` 1.0"),
    "ema": Official((0.99, "cosine"), f"{V3} main_moco.py; CONFIG.md",
                    "`--moco-m-cos`, per iteration"),
    "ema_update": Official(MOCO_EMA_IN_FORWARD, f"{V3} moco/builder.py"),
    "image_size": Official(224, f"{V3} main_moco.py"),
    "crop_input": Official("the full image", f"{V3} main_moco.py"),
    "crop_scale": Official((0.2, 1.0), f"{V3} CONFIG.md", "`--crop-min=.2` (code default 0.08)"),
    "crop_ratio": Official((3 / 4, 4 / 3), f"{V3} main_moco.py", "torchvision's default"),
    "jitter": Official((0.4, 0.4, 0.2, 0.1), f"{V3} main_moco.py"),
    "jitter_p": Official(0.8, f"{V3} main_moco.py"),
    "grayscale_p": Official(0.2, f"{V3} main_moco.py"),
    "blur_p": Official((1.0, 0.1), f"{V3} main_moco.py"),
    "blur_sigma": Official((0.1, 2.0), f"{V3} main_moco.py; moco/loader.py"),
    "solarize_p": Official((0.0, 0.2), f"{V3} main_moco.py"),
    "flip_p": Official(0.5, f"{V3} main_moco.py"),
    "normalize": IMAGENET_NORM,
    "knn": Official(None, f"{V3} main_moco.py", "no kNN monitor"),
    "eval_lr_rule": Official((0.1, "linear"), f"{V3} main_lincls.py",
                             "`init_lr = args.lr * args.batch_size / 256`"),
    "eval_lr": Official(0.4, f"{V3} main_lincls.py"),
    "eval_batch": Official(1024, f"{V3} main_lincls.py"),
    "eval_epochs": Official(90, f"{V3} main_lincls.py"),
    "eval_schedule": Official(("cosine",), f"{V3} main_lincls.py"),
    "eval_wd": Official(0.0, f"{V3} main_lincls.py"),
}

# MoCo-v3, ViT-Small, 300 epochs: CONFIG.md's ViT-S command (4 nodes, batch 4096):
# `-a vit_small --optimizer=adamw --lr=1.5e-4 --weight-decay=.1 --epochs=300 --warmup-epochs=40
#  --stop-grad-conv1 --moco-m-cos --moco-t=.2`.
MOCOV3_VITS: dict[str, Official] = {
    **{k: v for k, v in MOCOV3_R50.items() if k not in ("stem", "zero_init_residual")},
    "backbone": Official("vit_small", f"{V3} CONFIG.md; vits.py"),
    "vit": Official("patch 16, width 384, depth 12, 12 heads", f"{V3} vits.py",
                    "12 heads, not DeiT-S's 6"),
    "patch_embed_trained": Official(False, f"{V3} vits.py; CONFIG.md",
                                    "`--stop-grad-conv1` freezes the random patch projection"),
    "pos_embed_trained": Official(False, f"{V3} vits.py", "fixed 2-D sin-cos"),
    "projector": Official("384-4096-4096-256", f"{V3} moco/builder.py", "3 layers for the ViT"),
    "predictor_bn": Official("hidden BN, last BN without affine", f"{V3} moco/builder.py",
                             "the ViT predictor ends with BN"),
    "optimizer": Official("AdamW, betas (0.9, 0.999)", f"{V3} main_moco.py",
                          "torch's default betas"),
    "lr_rule": Official((1.5e-4, "linear"), f"{V3} CONFIG.md; main_moco.py"),
    "lr": Official(2.4e-3, f"{V3} CONFIG.md", "1.5e-4 x 4096/256 (the 1-node batch 1024: 6e-4)"),
    "weight_decay": Official(0.1, f"{V3} CONFIG.md"),
    "wd_bias_norm": Official(True, f"{V3} main_moco.py", "AdamW over `model.parameters()`"),
    "warmup": Official(40.0, f"{V3} CONFIG.md"),
    "epochs": Official(300, f"{V3} CONFIG.md"),
    "batch": Official(4096, f"{V3} CONFIG.md", "4 nodes; the 1-node command uses 1024"),
    "temperature": Official(0.2, f"{V3} CONFIG.md", "`--moco-t=.2`"),
    "crop_scale": Official((0.08, 1.0), f"{V3} main_moco.py",
                           "`--crop-min` default, not overridden"),
    "eval_lr_rule": Official((3.0, "linear"), f"{V3} CONFIG.md", "`--lr=3` for the ViT probes"),
    "eval_lr": Official(12.0, f"{V3} CONFIG.md; main_lincls.py"),
}

# The MoCo CIFAR-10 colab (branch colab-notebook), cells 4-15; its reported 82.6 kNN is asymmetric.
MOCOV2_CIFAR: dict[str, Official] = {
    "backbone": Official("resnet18", f"{COLAB} cell 8"),
    "stem": Official("conv 3x3 stride 1 padding 1, no max-pool", f"{COLAB} cell 8"),
    "zero_init_residual": Official(False, f"{COLAB} cell 8",
                                   "torchvision's default initialisation"),
    "projector": Official("512-128", f"{COLAB} cell 8", "resnet18's fc, no MLP"),
    "projector_bn": Official("none", f"{COLAB} cell 8"),
    "head_bias": Official(True, f"{COLAB} cell 8"),
    "bn": Official("shuffle-BN, BN statistics over 64 images", f"{COLAB} cells 4, 8, 10",
                   "SplitBatchNorm with `--bn-splits 8` of 512 and a shuffled key batch"),
    "optimizer": Official("SGD, momentum 0.9", f"{COLAB} cell 15"),
    "lr_rule": Official((0.06, "none"), f"{COLAB} cell 4",
                        "'0.06 for batch 512 (or 0.03 for batch 256)'"),
    "lr": Official(0.06, f"{COLAB} cell 4"),
    "weight_decay": Official(5e-4, f"{COLAB} cell 4"),
    "wd_bias_norm": Official(True, f"{COLAB} cell 15", "SGD over `model.parameters()`"),
    "warmup": Official(0.0, f"{COLAB} cell 12"),
    "schedule": Official(("cosine", "epoch", 0.0), f"{COLAB} cells 4, 12, 15"),
    "epochs": Official(200, f"{COLAB} cell 4"),
    "batch": Official(512, f"{COLAB} cell 4"),
    "precision": Official("fp32", f"{COLAB} cell 15", "no autocast"),
    "temperature": Official(0.1, f"{COLAB} cell 4"),
    "ema": Official((0.99, "constant"), f"{COLAB} cell 4"),
    "ema_update": Official(MOCO_EMA_IN_FORWARD, f"{COLAB} cell 10"),
    "queue": Official(4096, f"{COLAB} cell 4"),
    "loss": Official("asymmetric", f"{COLAB} cell 4", "`args.symmetric = False`"),
    "image_size": Official(32, f"{COLAB} cell 6"),
    "crop_input": Official("the full image", f"{COLAB} cell 6"),
    "crop_scale": Official((0.08, 1.0), f"{COLAB} cell 6",
                           "`RandomResizedCrop(32)`, the default scale"),
    "crop_ratio": Official((3 / 4, 4 / 3), f"{COLAB} cell 6", "torchvision's default"),
    "jitter": Official((0.4, 0.4, 0.4, 0.1), f"{COLAB} cell 6"),
    "jitter_p": Official(0.8, f"{COLAB} cell 6"),
    "grayscale_p": Official(0.2, f"{COLAB} cell 6"),
    "blur_p": Official((0.0, 0.0), f"{COLAB} cell 6", "no blur"),
    "solarize_p": Official((0.0, 0.0), f"{COLAB} cell 6"),
    "flip_p": Official(0.5, f"{COLAB} cell 6"),
    "normalize": Official(((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)), f"{COLAB} cell 6"),
    "knn": Official((200, 0.1, "projection output (128-d)"), f"{COLAB} cells 4, 13"),
    "eval_lr_rule": Official((30.0, "none"), f"{COLAB} cell 0; {MOCO} main_lincls.py",
                             "the colab recommends lr=30, wd=0, 100 epochs, step or cosine"),
    "eval_lr": Official(30.0, f"{COLAB} cell 0"),
    "eval_batch": Official(256, f"{MOCO} main_lincls.py",
                           "the colab names none; main_lincls.py's default"),
    "eval_epochs": Official(100, f"{COLAB} cell 0"),
    "eval_schedule": Official(("step", (60, 80)), f"{MOCO} main_lincls.py",
                              "the colab: 'stepwise or cosine'"),
    "eval_wd": Official(0.0, f"{COLAB} cell 0"),
}

_SOLO_CFG = f"{SOLO} scripts/pretrain/cifar/mocov3.yaml"
_SOLO_AUG = f"{SOLO} scripts/pretrain/cifar/augmentations/asymmetric.yaml"
_SOLO_BASE = f"{SOLO} solo/methods/base.py"
_SOLO_M3 = f"{SOLO} solo/methods/mocov3.py"
# solo-learn's CIFAR MoCo-v3 (its README: 93.10 top-1 on CIFAR-10 after 1000 epochs).
MOCOV3_CIFAR: dict[str, Official] = {
    "backbone": Official("resnet18", _SOLO_CFG),
    "stem": Official("conv 3x3 stride 1 padding 2, no max-pool", _SOLO_BASE),
    "zero_init_residual": Official(False, _SOLO_BASE,
                                   "no `backbone.kwargs`: torchvision's default"),
    "projector": Official("512-4096-256", f"{_SOLO_CFG}; solo/methods/mocov3.py"),
    "projector_bn": Official("hidden BN, last BN without affine", _SOLO_M3),
    "predictor": Official("256-4096-256", f"{_SOLO_CFG}; solo/methods/mocov3.py"),
    "predictor_bn": Official("hidden BN", _SOLO_M3, "`last_bn=False` for ResNets"),
    "head_bias": Official(False, _SOLO_M3),
    "bn": Official("SyncBN, whole model", _SOLO_CFG, "`sync_batchnorm: True` (on one GPU)"),
    "optimizer": Official("LARS, trust coefficient 0.02 with clip_lr, momentum 0.9",
                          f"{_SOLO_CFG}; solo/utils/lars.py"),
    "lr_rule": Official((0.3, "linear"), f"{_SOLO_CFG}; solo/args/pretrain.py",
                        "x batch x devices x nodes / 256"),
    "lr": Official(0.3, f"{_SOLO_CFG}; solo/args/pretrain.py", "batch 256 on one GPU"),
    "weight_decay": Official(1e-6, _SOLO_CFG),
    "wd_bias_norm": Official(False, f"{_SOLO_CFG}; solo/utils/lars.py",
                             "`exclude_bias_n_norm: True`"),
    "warmup": Official(10.0, _SOLO_BASE, "`warmup_cosine`, default 10 epochs from 3e-5"),
    "schedule": Official(("cosine", "step", 0.0), _SOLO_BASE,
                         "`scheduler.interval` default 'step'"),
    "epochs": Official(1000, _SOLO_CFG),
    "batch": Official(256, _SOLO_CFG, "`devices: [0]`"),
    "precision": Official("fp16 autocast + GradScaler", _SOLO_CFG, "`precision: 16-mixed`"),
    "temperature": Official(0.2, _SOLO_CFG),
    "ema": Official((0.99, "cosine"), f"{_SOLO_CFG}; solo/utils/momentum.py", "per step"),
    "ema_update": Official("after the optimizer step", _SOLO_BASE, "`on_train_batch_end`"),
    "image_size": Official(32, _SOLO_AUG),
    "crop_input": Official("the full image", _SOLO_AUG),
    "crop_scale": Official((0.08, 1.0), _SOLO_AUG),
    "crop_ratio": Official((3 / 4, 4 / 3), f"{SOLO} solo/data/pretrain_dataloader.py",
                           "torchvision's default"),
    "jitter": Official((0.4, 0.4, 0.2, 0.1), _SOLO_AUG),
    "jitter_p": Official(0.8, _SOLO_AUG),
    "grayscale_p": Official(0.2, _SOLO_AUG),
    "blur_p": Official((0.0, 0.0), _SOLO_AUG),
    "solarize_p": Official((0.0, 0.2), _SOLO_AUG),
    "flip_p": Official(0.5, _SOLO_AUG),
    "normalize": Official(((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                          f"{SOLO} solo/data/pretrain_dataloader.py"),
    "knn": Official(None, _SOLO_CFG, "no kNN monitor configured"),
    # solo-learn has no offline linear recipe for CIFAR (scripts/linear/ holds ImageNet and
    # ImageNet-100 only): the reference is the protocol the MoCo colab recommends.
    **{k: MOCOV2_CIFAR[k] for k in ("eval_lr_rule", "eval_lr", "eval_batch", "eval_epochs",
                                    "eval_schedule", "eval_wd")},
}


_BF_V3_LOSS_NOTE = (
    "`add_bf=1` (the README's `--add_bf 1`) returns, without division, the sum of "
    "`contrastive_loss` over q1 and q2's plain and BatchFormer rows x the other view's plain and "
    "BatchFormer keys: the code since c906e92 (2022-11-30), so at 305efaa. Before it (60066b9 "
    "to c906e92's parent; cc7a060 is the commit the README links for its MoCo-v3 model) the 8 "
    "terms were (q1p, k2p) + (q1p, k2bf) + 2 (q1bf, k2p) + 2 (q2p, k1p) + 2 (q2p, k1bf): no "
    "(q1bf, k2bf) term, q2's BatchFormer rows unused")


def _bf_official(dim: int, v3: bool) -> dict[str, Official]:
    """The BatchFormer authors' MoCo settings (zhihou7/BatchFormer moco-v3/moco/ at 305efaa)."""
    src = f"{BF} moco-v3/moco/{'builder.py' if v3 else 'builder_v2.py'}"
    layer = (f"1 x TransformerEncoderLayer(d={dim}, heads=4, ffn={dim}, dropout=0.5, ReLU, "
             f"post-norm)")
    if v3:
        optim = Official(BF_FROZEN_OPTIM, f"{src}; main_moco.py", (
            "LARS is given `model.parameters()`, but the module's `requires_grad` is False (see "
            "BatchFormer training), so its gradient stays None and LARS skips it"))
        training = Official("frozen at its random init; the same module also in the momentum "
                            "branch", src, (
                                "one `TransformerDecorator` is `fc.0` of both encoders' "
                                "projectors; the init loop over zip(base_encoder.parameters(), "
                                "momentum_encoder.parameters()) copies each shared tensor onto "
                                "itself and sets `requires_grad=False`, and the EMA's filter "
                                "`'encoder_global.'` never matches the names "
                                "`fc.0.encoder_layers.*` (it pairs each shared tensor with itself: "
                                "x m + x (1 - m) = x, up to rounding); "
                                "in train mode in both branches, so its dropout is on for the "
                                "keys too"))
        loss = Official("sum of the 8 query x key stream terms (4 pairings x 2 directions)",
                        src, _BF_V3_LOSS_NOTE)
    else:
        optim = Official("the optimizer's LR and weight decay", src,
                         "one optimizer group over `model.parameters()`")
        training = Official("trained; the same module also in the momentum branch", src, (
            "parameters named `encoder_layers.` are left out of the momentum copy and of the "
            "EMA, and keep `requires_grad`"))
        loss = Official(SSLKIT_BF_LOSS_BOTH, src, (
            "one cross-entropy over the 4N rows of the 4 pairings (their positive logits, the "
            "query rows repeated against the queue): the mean"))
    out = {
        "bf_layer": Official(layer, src, "`TransformerEncoderLayer(dim, 4, dim, 0.5)` at the head "
                             "of the projector, i.e. between the pooled backbone features and "
                             "the projector; d = the backbone's feature dim"),
        "bf_place": Official("between the pooled backbone features and the projector", src),
        "bf_optim": optim,
        "bf_scope": Official("the per-process batch", src, "each GPU's batch as one sequence"),
        "bf_training": training,
        "bf_loss": loss,
        "bf_precision": Official(SSLKIT_BF_AUTOCAST, f"{BF} moco-v3/main_moco.py" if v3 else
                                 f"{MOCO} main_moco.py", "fp16 autocast around the forward, no "
                                 "override for the BatchFormer" if v3 else "no autocast: fp32"),
    }
    if v3:
        out["bf_head_bn"] = Official(BF_JOINT_BOTH, src, (
            "the BatchFormer is the first layer of both projectors, so every BatchNorm after it "
            "(projector, predictor, momentum projector; SyncBN under DDP) normalises the 2N rows "
            "of both streams"))
    return out


def _bfv2_official() -> dict[str, Official]:
    """BatchFormerV2's settings in the authors' DeiT code (zhihou7/BatchFormer
    batchformer-v2/deit_share): there is no published self-supervised BatchFormerV2."""
    src = f"{BF} batchformer-v2/deit_share"
    return {
        "bf_layer": Official("1 x TransformerEncoderLayer(d=384, heads=4, ffn=384, dropout=0.5, "
                             "ReLU, post-norm)", f"{src} bt.py",
                             "`TransformerEncoderLayer(dim, 4, dim, 0.5)`, fed (B, L, C) in "
                             "non-batch-first layout: each token position attends across the "
                             "batch"),
        "bf_place": Official("on every token after block(s) [8] of 12, one shared module",
                             f"{src} README.md, main.py", "`--insert_idx 8`, `--shared_bt 1`; "
                             "the DETR version's two streams (the DeiT version never doubles "
                             "the batch: a bug)"),
        "bf_optim": Official("the optimizer's LR and weight decay",
                             f"{src} README.md, main.py, optimizer.py", (
                                 "the README's `--bt_lr 0.5` has no effect: "
                                 "`create_optimizer_v2` applies `bt_lr` only when `--bt_decay` "
                                 "> 0 (default 0), so the BatchFormer has DeiT's LR and weight "
                                 "decay like every other layer (0.05 on its matrices, 0 on its "
                                 "biases and norms, timm's `add_weight_decay`). With "
                                 "`--bt_decay D` > 0 its matrices (names containing 'encoder') "
                                 "get 0.5x the LR and decay D, its biases and norms the base LR "
                                 "and decay 0: a split sslkit's one-group `lr_scale` does not "
                                 "express")),
        "bf_scope": Official("the per-process batch", f"{src} bt.py"),
        "bf_training": Official("trained (supervised DeiT: no momentum encoder)", f"{src} main.py"),
        "bf_loss": Official("cross-entropy of both streams against the duplicated labels",
                            f"{src} engine.py"),
        "bf_head_bn": Official("no BatchNorm in the head", f"{src} main.py",
                               "timm's DeiT: a Linear classifier"),
        "bf_precision": Official(SSLKIT_BF_AUTOCAST, f"{src} main.py, bt.py, engine.py", (
            "`--no_fp16_bt` defaults to 0: the BatchFormer runs under DeiT's fp16 autocast; a "
            "nonzero value runs it, and every block's attention (`BlockWrap32`, 'for ease nan'), "
            "in fp32")),
    }


_BFV2_DELIBERATE = {
    "bf_training": Deliberate(SSLKIT_BF_TRAINED, (
        "The authors' BatchFormerV2 is supervised (DeiT) and their MoCo code covers ResNets "
        "with the pooled-feature BatchFormer only; sslkit applies BatchFormerV2 to MoCo-v3's "
        "online ViT, trained, and keeps MoCo-v3's momentum encoder, as its v1 recipes do.")),
    "bf_loss": Deliberate(SSLKIT_BF_LOSS, (
        "There are no labels to duplicate in self-supervised learning: each stream's queries "
        "are paired with the plain momentum keys, and the loss is the mean of the two streams' "
        "MoCo-v3 losses (MoCo-v3's scale, so the LR recipe holds).")),
    "bf_head_bn": Deliberate(BF_JOINT_PLAIN, (
        "MoCo-v3's ViT heads have BatchNorm, DeiT's classifier has none. sslkit's default "
        "(`batchformer.head_bn: joint`) normalises both streams together, so the plain "
        "stream equals the BatchFormer-free ViT up to the backbone features only; "
        "`head_bn: per_stream` makes the plain queries exact too.")),
    "bf_precision": Deliberate(SSLKIT_BFV2_FP32, (
        "sslkit's own choice: BatchFormerV2 always runs in fp32 with autocast off around it "
        "(sslkit/models/batchformer.py). The authors' code does so only with `--no_fp16_bt` "
        "(off by default; it also moves every block's attention to fp32, 'for ease nan' in "
        "their comment). The module is small beside the ViT blocks, so fp32 costs little.")),
}


# --------------------------------------------------------------------------- deliberate differences
def _precision(official: str) -> Deliberate:
    return Deliberate("bf16 autocast where native (GPU, CPU), else fp32", (
        f"The reference runs {official}. sslkit's `run.precision: auto` is bf16 autocast "
        "on GPUs that support it: bf16 has fp32's exponent range, so no GradScaler is needed "
        "and no step is lost to a loss-scale overflow; on a CPU it is bf16 only where the CPU computes bf16 natively, else fp32."))


EMA_AFTER_STEP = Deliberate(SSLKIT_EMA_UPDATE, (
    "sslkit updates the momentum encoder at the end of each training step, after the "
    "optimizer's and the LR schedule's steps (sslkit/train/step.py); "
    "the official code does it inside `forward`, just before the key forward. The "
    "key encoder averages the same sequence of online weights; only the momentum schedule's "
    "index is shifted by one step (for a constant momentum the two are identical)."))

LR_LINEAR_V2 = Deliberate((0.03, "linear"), (
    "sslkit scales `optim.lr` by global batch / 256 (Goyal et al. 2017), so a config means the "
    "same recipe on any number of GPUs; facebookresearch/moco takes the LR as given and its "
    "README scales it by hand (0.015 at batch 128). At this recipe's batch of 256 both are 0.03."))

SCHEDULE_PER_STEP_V2 = Deliberate(("cosine", "step", 0.0), (
    "sslkit evaluates the cosine at every step (sslkit/train/optim.py); facebookresearch/moco "
    "main_moco.py sets it once per epoch (its last epoch runs at 1.85e-6, not 0). Same curve, "
    "without the per-epoch staircase."))

SCHEDULE_PER_STEP_COLAB = Deliberate(("cosine", "step", 0.0), (
    "sslkit evaluates the cosine at every step; the colab sets it once per epoch over epochs "
    "1..200, so its last epoch runs at exactly 0. Same curve, without the per-epoch staircase."))

KNN_IMAGENET = Deliberate((20, 0.07, SSLKIT_KNN_FEATURES), (
    "An sslkit monitor (every 10 epochs, on 100k training images); it does not change training."))

PROBE_LR_LINEAR = Deliberate((30.0, "linear"), (
    "sslkit's probe scales `eval.lr` by `eval.batch_size`/256 (linear_eval/standard.py); the "
    "official probe takes 30 as given. At batch 256 both are 30."))

CIFAR_STD = Deliberate(((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), (
    "sslkit uses the CIFAR-10 training set's per-pixel std (sslkit/data/info.py); the colab "
    "copies the widely used 0.2023, 0.1994, 0.2010, which is not the dataset's std. A fixed "
    "rescaling of the input, which the first BN absorbs."))

KNN_FEATURES = Deliberate((200, 0.1, SSLKIT_KNN_FEATURES), (
    "sslkit's online kNN uses the backbone features (512-d), the representation that is "
    "exported and probed; the colab's monitor uses the 128-d projection output. Same k and T."))


def _bf_deliberate(v3: bool) -> dict[str, Deliberate]:
    """sslkit's BatchFormer scheme (the `_bf` recipes) against the authors' MoCo code; their
    MoCo-v3 scheme as run is configs/imagenet_mocov3_r50_100ep_bf_authors.yaml."""
    if v3:
        training = Deliberate(SSLKIT_BF_TRAINED, (
            "In the authors' moco-v3 builder.py the one BatchFormer module sits in both encoders' "
            "projectors, and the loop that freezes the momentum encoder sets `requires_grad=False` "
            "on it as well, so it stays at its random init for the whole run (the EMA leaves the "
            "shared tensors unchanged). sslkit's scheme trains it, on the online branch only, as "
            "the BatchFormer paper describes (a learned module dropped at test time); the "
            "momentum encoder stays MoCo-v3's. The authors' scheme as run: the `_bf_authors` "
            "recipe (`batchformer.keys: both`, `frozen: true`, `loss_reduction: sum`)."))
        optim = Deliberate("the optimizer's LR and weight decay", (
            "sslkit's scheme trains the BatchFormer (see BatchFormer training), with the "
            "optimizer's LR and weight decay in a group of its own; the authors' is never "
            "updated."))
        loss = Deliberate(SSLKIT_BF_LOSS, (
            "The authors sum 8 terms over keys of both streams (4x the mean, at MoCo-v3's LR). "
            "sslkit's scheme averages the plain and BatchFormer streams' losses, each against "
            "the plain momentum keys, so the loss keeps MoCo-v3's scale and the LR recipe still "
            "holds."))
        head_bn = Deliberate(BF_JOINT_PLAIN, (
            "With plain keys the momentum projector sees the B plain keys only, while the "
            "online heads' BatchNorm (`batchformer.head_bn: joint`, the default) normalises "
            "both streams together as the authors' do: the plain stream is then close to, not "
            "exactly, MoCo-v3 without BatchFormer. `head_bn: per_stream` makes it exact "
            "(tests/test_bf_schemes.py); which trains better is measured in docs/results.md."))
        return {"bf_training": training, "bf_optim": optim, "bf_loss": loss,
                "bf_head_bn": head_bn}
    training = Deliberate(SSLKIT_BF_TRAINED, (
        "The authors' builder_v2.py shares its (trained) BatchFormer with the key encoder, "
        "so every step enqueues 2N keys, half of them BatchFormer keys; no script of the "
        "repository builds it, and as released its constructor raises a TypeError. sslkit "
        "keeps MoCo-v2's key encoder and queue (plain keys only), so the recipe differs from "
        "its twin only by the online BatchFormer stream."))
    loss = Deliberate(SSLKIT_BF_LOSS, (
        "sslkit averages the plain and BatchFormer streams' losses, each against the plain "
        "keys and the queue, which keeps MoCo-v2's loss scale; the authors pair both query "
        "streams with both key streams in one cross-entropy (also a mean)."))
    return {"bf_training": training, "bf_loss": loss}


# --------------------------------------------------------------------------- recipes
@dataclasses.dataclass(frozen=True)
class Recipe:
    config: str                        # configs/<config>.yaml
    reference: str                     # what the official column is (one sentence)
    official: dict[str, Official]
    deliberate: dict[str, Deliberate] = dataclasses.field(default_factory=dict)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)  # on matching rows


NOTE_BLUR_KERNEL = ("sslkit's Gaussian kernel is truncated at about 10% of the view side "
                    "(23 px at 224, sslkit/augment.py); PIL's blur is not truncated.")
NOTE_SOLARIZE = ("threshold 0.5 of [0, 1] (PIL: 128 of 255, the same cut on 8-bit pixels); "
                 "view 2 only")
NOTE_SPLIT_BN = ("in one process sslkit splits BN into `method.bn_splits` groups over a "
                 "shuffled key batch (the colab's SplitBatchNorm); under torchrun it shuffles "
                 "the keys across processes, batch/processes images per BN.")
NOTE_SYNC_BN = ("under torchrun the whole method is converted to SyncBatchNorm "
                "(sslkit/train/engine.py); in one process BN sees the whole batch anyway.")
NOTE_V3_WARMUP = ("linear from 0 (official) / from 1/warmup_steps (sslkit): one step apart")
NOTE_V3_EMA = "per step, 0.99 at the first step, 1 at the last"

_V2_IN_DELIBERATE = {
    "precision": _precision("in fp32 (no autocast)"),
    "lr_rule": LR_LINEAR_V2,
    "schedule": SCHEDULE_PER_STEP_V2,
    "ema_update": EMA_AFTER_STEP,
    "knn": KNN_IMAGENET,
    "eval_lr_rule": PROBE_LR_LINEAR,
}
NOTE_CROP_ORIGINAL = ("decoded once per image in the loader; both views cut from it with "
                      "torchvision's get_params draws (sslkit/data/crops.py)")
_V2_IN_NOTES = {"blur_p": NOTE_BLUR_KERNEL, "bn": NOTE_SPLIT_BN,
                "crop_input": NOTE_CROP_ORIGINAL}

_V3_IN_DELIBERATE = {
    "precision": _precision("fp16 autocast with a GradScaler"),
    "ema_update": EMA_AFTER_STEP,
    "knn": KNN_IMAGENET,
}
_V3_IN_NOTES = {"blur_p": NOTE_BLUR_KERNEL, "solarize_p": NOTE_SOLARIZE, "bn": NOTE_SYNC_BN,
                "warmup": NOTE_V3_WARMUP, "ema": NOTE_V3_EMA,
                "crop_input": NOTE_CROP_ORIGINAL}

_COLAB_DELIBERATE = {
    "precision": _precision("in fp32 (no autocast)"),
    "schedule": SCHEDULE_PER_STEP_COLAB,
    "ema_update": EMA_AFTER_STEP,
    "normalize": CIFAR_STD,
    "knn": KNN_FEATURES,
    "eval_lr_rule": PROBE_LR_LINEAR,
}
_COLAB_NOTES = {"bn": NOTE_SPLIT_BN,
                "flip_p": "the colab flips before the colour jitter, sslkit last; a flip "
                          "commutes with the colour operations"}

_SOLO_BUDGET = ("200 epochs at batch 512: the budget of cifar10_mocov2.yaml (the MoCo colab's), "
                "so the CIFAR MoCo-v2 and MoCo-v3 recipes (and their BatchFormer twins) compare "
                "at equal cost; solo-learn trains 1000 epochs at batch 256. The base LR and its "
                "linear rule are solo-learn's.")
_SOLO_DELIBERATE = {
    "stem": Deliberate("conv 3x3 stride 1 padding 1, no max-pool", (
        "sslkit's CIFAR stem is the MoCo colab's (padding 1: 32x32 maps); solo-learn pads by 2, "
        "which gives 34x34 maps with a one-pixel border.")),
    "optimizer": Deliberate("LARS, trust coefficient 0.001, momentum 0.9", (
        "sslkit's LARS is MoCo-v3's (moco-v3 moco/optimizer.py: trust coefficient 0.001, no "
        "clipping). solo-learn's `clip_lr: True` with eta 0.02 caps each layer's adaptive LR at "
        "the global LR (LARC), which sslkit's optimizer cannot express without a library change.")),
    "lr": Deliberate(0.6, "0.3 x 512/256: the same base LR and rule at batch 512 (see epochs)."),
    "epochs": Deliberate(200, _SOLO_BUDGET),
    "batch": Deliberate(512, _SOLO_BUDGET),
    "precision": _precision("fp16 mixed precision with a GradScaler (`16-mixed`)"),
    "knn": Deliberate((200, 0.1, SSLKIT_KNN_FEATURES), (
        "An sslkit monitor with the MoCo colab's k=200, T=0.1 (every 10 epochs); it does not "
        "change training.")),
    "eval_lr_rule": PROBE_LR_LINEAR,
}
_SOLO_NOTES = {"solarize_p": NOTE_SOLARIZE, "bn": NOTE_SYNC_BN, "ema": NOTE_V3_EMA,
               "warmup": "solo-learn ramps from 3e-5, sslkit from 1/warmup_steps of the LR",
               "eval_schedule": "the colab's recommendation; solo-learn has no "
               "offline linear recipe for CIFAR (its pretraining trains a linear classifier "
               "online, on detached features)"}

_V2_BF_NOTES = {"projector_bn": "the BatchFormer authors' builder_v2.py adds a BN to this "
                "head; sslkit keeps MoCo-v2's, so the recipe differs from its twin only by "
                "the BatchFormer"}

_BF_AUTHORS_REFERENCE = (
    "MoCo-v3, ResNet-50, 100 epochs, with the BatchFormer as the authors' MoCo-v3 code runs it: "
    "zhihou7/BatchFormer `moco-v3/moco/builder.py` and `moco-v3/main_moco.py` at 305efaa (their "
    "main_moco.py is moco-v3's plus `--add_bf`), with the README's `--add_bf 1`: one "
    "BatchFormer shared by both projectors, frozen at its random init, keys of both streams, "
    "the 8-term summed loss and BatchNorm over both streams (`batchformer.keys: both`, "
    "`frozen: true`, `loss_reduction: sum`, `head_bn: joint`). Published (their README): 68.9 "
    "-> 70.1 linear top-1. The history of that number: 69.9 (3cb02fc, 2022-03-20), then 69.6 "
    "with a download (8da1800, 2022-03-29), which added the sentence linking builder.py at "
    "cc7a060 (line 139, inside the `add_bf == 37` branch of the older loss) as 'the pretrained "
    "MoCo-V3 model corresponding to this strategy'; the loss was fixed in c906e92 "
    "(2022-11-30); 70.1 with a new download replaced 69.6 on 2022-12-04 (6f89e22), the "
    "sentence and its cc7a060 link unchanged. Which loss trained the 70.1 model is not "
    "stated: this recipe is the code at 305efaa.")
_BF_AUTHORS_NOTES = {
    "lr": ("the authors keep MoCo-v3's LR with the summed loss (4x the mean): LARS's trust "
           "ratio cancels the scale for the weight matrices (up to weight decay's share of the "
           "update), not for the biases and BatchNorm parameters, which it leaves unadapted "
           "(4x their steps)"),
}

RECIPES: dict[str, Recipe] = {r.config: r for r in [
    Recipe("imagenet_mocov2_200ep", "MoCo-v2, ResNet-50, 200 epochs (facebookresearch/moco, "
           "README: `--mlp --moco-t 0.2 --aug-plus --cos`, `--lr 0.03 --batch-size 256`, 8 GPUs).",
           MOCOV2_IMAGENET, _V2_IN_DELIBERATE, _V2_IN_NOTES),
    Recipe("imagenet_mocov2_200ep_bf", "MoCo-v2, ResNet-50, 200 epochs, plus the BatchFormer "
           "authors' MoCo-v2 settings (zhihou7/BatchFormer moco-v3/moco/builder_v2.py).",
           {**MOCOV2_IMAGENET, **_bf_official(2048, v3=False)},
           {**_V2_IN_DELIBERATE, **_bf_deliberate(False)}, {**_V2_IN_NOTES, **_V2_BF_NOTES}),
    Recipe("imagenet_mocov3_r50_100ep", "MoCo-v3, ResNet-50, 100 epochs (facebookresearch/moco-v3 "
           "CONFIG.md: `--moco-m-cos --crop-min=.2`, batch 4096).",
           MOCOV3_R50, _V3_IN_DELIBERATE, _V3_IN_NOTES),
    Recipe("imagenet_mocov3_r50_100ep_bf", "MoCo-v3, ResNet-50, 100 epochs, plus a BatchFormer in "
           "sslkit's scheme (plain keys, trained, mean loss), against the BatchFormer authors' "
           "MoCo-v3 settings (zhihou7/BatchFormer moco-v3/moco/builder.py, `--add_bf 1`); their "
           "scheme as run is the `imagenet_mocov3_r50_100ep_bf_authors` recipe.",
           {**MOCOV3_R50, **_bf_official(2048, v3=True)},
           {**_V3_IN_DELIBERATE, **_bf_deliberate(True)}, _V3_IN_NOTES),
    Recipe("imagenet_mocov3_r50_100ep_bf_authors", _BF_AUTHORS_REFERENCE,
           {**MOCOV3_R50, **_bf_official(2048, v3=True)}, _V3_IN_DELIBERATE,
           {**_V3_IN_NOTES, **_BF_AUTHORS_NOTES}),
    Recipe("imagenet_mocov3_vits_300ep", "MoCo-v3, ViT-Small, 300 epochs (facebookresearch/moco-v3 "
           "CONFIG.md, the 4-node command with batch 4096).",
           MOCOV3_VITS, _V3_IN_DELIBERATE, _V3_IN_NOTES),
    Recipe("imagenet_mocov3_vits_300ep_bfv2", "MoCo-v3, ViT-Small, 300 epochs, plus "
           "BatchFormerV2 with the authors' DeiT placement and optimizer settings "
           "(zhihou7/BatchFormer batchformer-v2/deit_share; no self-supervised BatchFormerV2 "
           "is published).",
           {**MOCOV3_VITS, **_bfv2_official()}, {**_V3_IN_DELIBERATE, **_BFV2_DELIBERATE},
           _V3_IN_NOTES),
    Recipe("cifar10_mocov2", "The MoCo CIFAR-10 demo (facebookresearch/moco, branch "
           "colab-notebook, colab/moco_cifar10_demo.ipynb), asymmetric loss, 200 epochs.",
           MOCOV2_CIFAR, _COLAB_DELIBERATE, _COLAB_NOTES),
    Recipe("cifar10_mocov2_bf", "The MoCo CIFAR-10 demo plus the BatchFormer authors' MoCo-v2 "
           "settings (zhihou7/BatchFormer moco-v3/moco/builder_v2.py; they publish no CIFAR run).",
           {**MOCOV2_CIFAR, **_bf_official(512, v3=False)},
           {**_COLAB_DELIBERATE, **_bf_deliberate(False)}, _COLAB_NOTES),
    Recipe("cifar10_mocov3", "MoCo-v3 has no official CIFAR recipe: the reference is solo-learn's "
           "(vturrisi/solo-learn scripts/pretrain/cifar/mocov3.yaml); the linear-eval rows use "
           "the protocol the MoCo colab recommends.",
           MOCOV3_CIFAR, _SOLO_DELIBERATE, _SOLO_NOTES),
    Recipe("cifar10_mocov3_bf", "solo-learn's CIFAR MoCo-v3 recipe plus the BatchFormer authors' "
           "MoCo-v3 settings (zhihou7/BatchFormer moco-v3/moco/builder.py; they publish no CIFAR "
           "run).",
           {**MOCOV3_CIFAR, **_bf_official(512, v3=True)},
           {**_SOLO_DELIBERATE, **_bf_deliberate(True)}, _SOLO_NOTES),
]}


# --------------------------------------------------------------------------- comparison
def same(a: Any, b: Any) -> bool:
    """Equal, with floats compared to 1e-9 relative (0.6 x 4096/256 is not exactly 9.6)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    label: str
    sslkit: Any
    official: Official
    status: str        # "same", "deliberate", "mismatch" (an unexplained difference) or
                       # "stale" (marked deliberate, but the values agree or the mark names
                       # another sslkit value)
    note: str

    def cells(self) -> list[str]:
        show = PARAM[self.key].show
        return [self.label, show(self.sslkit), show(self.official.value), self.official.source,
                self.note]


def applicable(resolved: Resolved) -> list[Param]:
    return [p for p in PARAMS if p.applies(resolved)]


def judge(params: list, subject: Any, recipe: Any) -> list[tuple]:
    """``(param, sslkit value, official, status, note)`` for each of ``params`` probed on
    ``subject`` against ``recipe``; status "same", "deliberate", "mismatch" or "stale" (marked
    deliberate, but the values agree or the mark names another sslkit value). Raises KeyError
    when the recipe lacks an official value for one of ``params`` (or has one for a parameter
    not among them), so that nothing is left out silently. Shared by
    scripts/recipes_finetune.py."""
    keys = [p.key for p in params]
    missing = [k for k in keys if k not in recipe.official]
    extra = [k for k in recipe.official if k not in keys]
    if missing or extra:
        raise KeyError(f"{recipe.config}: no official value for {missing}; official values for "
                       f"parameters that do not apply: {extra}")
    out = []
    for p in params:
        value, off = p.probe(subject), recipe.official[p.key]
        mark = recipe.deliberate.get(p.key)
        notes = [n.rstrip(".") for n in (off.note, recipe.notes.get(p.key, "")) if n]
        if mark is None:
            status = "same" if same(value, off.value) else "mismatch"
        elif same(value, off.value) or not same(value, mark.sslkit):
            status = "stale"
        else:
            status = "deliberate"
        if status == "deliberate":
            notes.append(f"**Differs:** {mark.reason}")
        elif status == "mismatch":
            notes.append("**UNEXPLAINED DIFFERENCE**: fix the config or record the reason")
        elif status == "stale":
            notes.append(f"**STALE MARK**: recorded for sslkit value {p.show(mark.sslkit)}")
        out.append((p, value, off, status, "; ".join(notes)))
    return out


def compare(cfg: sslconfig.Config, recipe: Recipe) -> list[Row]:
    """One row per parameter that applies to ``cfg`` (:func:`judge`)."""
    r = Resolved(cfg)
    return [Row(p.key, p.label, value, off, status, note)
            for p, value, off, status, note in judge(applicable(r), r, recipe)]


def problems(rows: list[Row]) -> list[Row]:
    return [row for row in rows if row.status in ("mismatch", "stale")]


def config_path(name: str) -> Path:
    return ROOT / "configs" / f"{name}.yaml"


FINETUNE_PREFIXES = ("imagenet_semisup_", "imagenet_finetune_")  # scripts/recipes_finetune.py


def recipe_configs() -> list[str]:
    """Every pretraining configs/imagenet_*.yaml and configs/cifar10_*.yaml, by name (the
    fine-tuning recipes are scripts/recipes_finetune.py's)."""
    files = (sorted(ROOT.glob("configs/imagenet_*.yaml"))
             + sorted(ROOT.glob("configs/cifar10_*.yaml")))
    return [f.stem for f in files if not f.stem.startswith(FINETUNE_PREFIXES)]


# --------------------------------------------------------------------------- the page
HEADER = """# Recipes against the official code

Each ImageNet and CIFAR-10 recipe of `configs/`, as sslkit resolves it, next to the official
value of each parameter and the file it was read from. The page is generated by
`python scripts/recipes.py`, which holds the official values as data;
`tests/test_recipes.py` fails when a config departs from an official value without a recorded
reason, and when this page is stale.

**sslkit (resolved)** is what the code makes of the config: `sslkit.config.load` (keys left
null get the method's defaults), the augmentation preset with its overrides
(`sslkit.augment.resolve_params`), the LR scaled to the recipe's batch (`sslkit.train.optim`), and the
heads, stem and BatchFormer of the method that `sslkit.methods.build_method` builds. Five
rows state behaviour fixed by sslkit's code rather than by a key alone: where the momentum
update runs (`sslkit/train/engine.py`), the BatchFormer loss (`sslkit/methods/streams.py`, from
`batchformer.keys` and `batchformer.loss_reduction`), the BatchFormer's precision under
autocast (`sslkit/models/batchformer.py`: BatchFormerV2 in fp32), the features of the online
kNN (`sslkit/train/engine.py`) and the linear probe's LR rule (`linear_eval/standard.py`).
Rows whose note says **Differs** are deliberate differences, with the reason. Keys that do not
change what is trained are not compared: the run's plumbing (`run.*`) and the checkpoint
cadence; the official scripts save once per epoch, and the ImageNet recipes add a checkpoint
every 10 minutes of wall clock (`train.checkpoint_every_minutes`, see docs/cluster.md).

Sources, read at these commits:

| repository | commit | what |
| --- | --- | --- |
"""


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    out = [HEADER]
    for repo, commit, what in SOURCES:
        out.append(f"| {repo} | {commit} | {what} |\n")
    out.append("\nRecipes: " + ", ".join(f"[{n}](#{n})" for n in RECIPES) + ".\n")
    for name in recipe_configs():
        if name not in RECIPES:
            raise KeyError(f"configs/{name}.yaml has no entry in RECIPES (scripts/recipes.py)")
        recipe = RECIPES[name]
        rows = compare(sslconfig.load(config_path(name)), recipe)
        n_diff = sum(row.status == "deliberate" for row in rows)
        out.append(f"\n## {name}\n\n`configs/{name}.yaml`. Reference: {recipe.reference} "
                   f"{len(rows)} parameters, {n_diff} deliberate differences.\n\n")
        out.append("| parameter | sslkit (resolved) | official | source | note |\n")
        out.append("| --- | --- | --- | --- | --- |\n")
        for row in rows:
            out.append("| " + " | ".join(_cell(c) for c in row.cells()) + " |\n")
    import recipes_finetune  # it imports this module's types: imported once they exist

    out.append(recipes_finetune.render())
    return "".join(out)


def check(page: Path = PAGE) -> int:
    """0 if ``page`` is what :func:`render` writes, else 1 (with a message)."""
    current = page.read_text(encoding="utf-8") if page.exists() else ""
    if current != render():
        print(f"{page} is stale; regenerate it with: python scripts/recipes.py", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/recipes.md is stale")
    args = parser.parse_args(argv)
    import recipes_finetune  # it imports this module's types: imported once they exist

    bad = [(name, row, PARAM) for name in recipe_configs()
           for row in problems(compare(sslconfig.load(config_path(name)), RECIPES[name]))]
    bad += [(name, row, recipes_finetune.PARAM) for name in recipes_finetune.finetune_configs()
            for row in recipes_finetune.problems(recipes_finetune.compare(
                sslconfig.load(config_path(name)), recipes_finetune.RECIPES[name]))]
    for name, row, params in bad:
        print(f"{name}: {row.key}: sslkit {params[row.key].show(row.sslkit)} vs official "
              f"{params[row.key].show(row.official.value)} ({row.status})", file=sys.stderr)
    if args.check:
        return check() or (1 if bad else 0)
    PAGE.write_text(render(), encoding="utf-8")
    print(f"wrote {PAGE} ({len(RECIPES) + len(recipes_finetune.RECIPES)} recipes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
