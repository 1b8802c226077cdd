"""The fine-tuning recipes of configs/ (``imagenet_semisup_*``, ``imagenet_finetune_*``) beside
the official values: the last section of docs/recipes.md (``scripts/recipes.py`` writes the
page; tests/test_recipes.py checks both).

The sslkit column is read from the code under test: the config as ``run_finetune.py``
resolves it (``sslkit.config.load``, ``sslkit.methods.resolve.resolved``), the network and
optimizer it builds (``sslkit.evaluation.classifier.build_classifier`` on the meta device and
``build_optimizer``: optimizer type, Nesterov, betas, LR per group, weight decay per group),
and the input views of ``sslkit.evaluation.finetune_setup`` / ``sslkit.views.supervised``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from recipes import Deliberate, Official, Param, _cell, judge
from sslkit import config as sslconfig
from sslkit.evaluation.classifier import build_classifier, build_optimizer, vit_blocks
from sslkit.methods.resolve import resolved
from sslkit.train.optim import lr_factor
from sslkit.views.supervised import SMALL_IMAGE_MAX

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = ("imagenet_semisup_", "imagenet_finetune_")

SIMCLR = "google-research/simclr"     # 383d414; the paper: Chen et al. 2020, appendix B.5
B5 = "SimCLR paper, appendix B.5"
V3 = "facebookresearch/moco-v3"       # c349e6e
DEIT = "facebookresearch/deit"        # 7e160fe
MAE = "facebookresearch/mae"          # efb2a80

SOURCES = [
    (SIMCLR, "`383d414`", "the semi-supervised subsets `imagenet_subsets/1percent.txt` and "
     "`10percent.txt`, `run.py`, `model_util.py` (Nesterov momentum, cosine schedule), "
     "`data.py` / `data_util.py` (fine-tuning views: crop + flip, no colour); the values of "
     "SimCLR's appendix B.5 (Chen et al. 2020)"),
    (V3, "`c349e6e`", "README.md: \"end-to-end fine-tuning ... using all the default DeiT "
     "configs. ViT-B is fine-tuned for 150 epochs\"; ViT-S with 12 heads"),
    (DEIT, "`7e160fe`", "`main.py` (the defaults), `datasets.py` (`build_transform`), "
     "README_deit.md (4 GPUs x 256 images)"),
    (MAE, "`efb2a80`", "`util/lr_decay.py` (BEiT's layer-wise LR decay) and FINETUNE.md, for "
     "`finetune.layer_decay`, which MoCo-v3's recipe does not use"),
]


class Built:
    """A fine-tuning config as run_finetune.py resolves it, with its network and optimizer
    built on the meta device (structure and hyper-parameters only)."""

    def __init__(self, cfg: sslconfig.Config):
        self.cfg = cfg = resolved(cfg)
        with torch.device("meta"):
            self.model = build_classifier(cfg, None, "", 1000)
            self.opt = build_optimizer(self.model, cfg.finetune)
        self.vit = bool(vit_blocks(self.model.backbone))


def _optimizer(b: Built) -> str:
    d = b.opt.defaults
    if isinstance(b.opt, torch.optim.SGD):
        return f"SGD, {'Nesterov ' if d['nesterov'] else ''}momentum {d['momentum']:g}"
    return f"AdamW, betas ({d['betas'][0]:g}, {d['betas'][1]:g}), eps {d['eps']:g}"


def _peak_lr(b: Built) -> float:
    return max(g["lr"] for g in b.opt.param_groups)


def _layer_decay(b: Built) -> Any:
    """The LR of the first block's group over the last block's, per block (1: none)."""
    lrs = sorted({g["lr"] for g in b.opt.param_groups})
    return 1.0 if len(lrs) == 1 else round((lrs[1] / lrs[-1]) ** (1 / (len(lrs) - 2)), 6)


def _no_decay(b: Built) -> str:
    groups = [g for g in b.opt.param_groups if g["weight_decay"] == 0.0]
    if b.cfg.finetune.weight_decay == 0.0:
        return "none (no weight decay at all)"
    return ("biases, norms, class token, position embedding" if groups
            else "none: every parameter decays")


def _schedule(b: Built) -> tuple:
    ft, spe = b.cfg.finetune, 10
    total, warm = ft.epochs * spe, int(round(ft.warmup_epochs * spe))
    s = warm + spe
    moves = lr_factor(s, total, warm, ft.schedule) != lr_factor(s + 1, total, warm, ft.schedule)
    return (ft.schedule, "step" if moves else "epoch", ft.min_lr)


def _labels(b: Built) -> str:
    ft = b.cfg.finetune
    if ft.subset_file is not None:
        return f"the images of {Path(ft.subset_file).name}"
    if ft.label_fraction is not None:
        return f"{ft.label_fraction:g} of each class, seeded"
    return "all"


def _crop(b: Built) -> str:
    ft, d = b.cfg.finetune, b.cfg.data
    if d.image_size <= SMALL_IMAGE_MAX:
        return "4 px padded random crop"
    where = "the whole image" if ft.augment == "timm" else f"the centre {d.load_size} px square"
    return (f"random-resized crop of {where}, scale ({ft.crop_scale[0]:g}, "
            f"{ft.crop_scale[1]:g}), {ft.interpolation}")


def _mix(b: Built) -> tuple:
    ft = b.cfg.finetune
    return (ft.mixup, ft.cutmix, ft.mixup_prob, ft.mixup_switch_prob)


def _fmt_mix(v: tuple) -> str:
    if v[0] <= 0 and v[1] <= 0:
        return "none"
    return f"mixup {v[0]:g}, cutmix {v[1]:g}, prob {v[2]:g}, switch {v[3]:g}"


def _fmt_schedule(v: tuple) -> str:
    return f"{v[0]} to {v[2]:g}, set per {v[1]}"


def _fmt_head(v: float) -> str:
    return "zeros" if v == 0 else f"N(0, {v:g}^2), bias 0"


FT_SAMPLER = "every labelled image once an epoch (the last batch filled up)"
FT_EMA = "none"
FT_TRAINED = "every parameter (patch projection and position embedding included)"


PARAMS = [
    Param("backbone", "backbone", lambda b: b.cfg.model.backbone),
    Param("trained", "parameters trained", lambda b: FT_TRAINED if all(
        p.requires_grad for p in b.model.parameters()) else "some frozen", lambda b: b.vit),
    Param("head_init", "linear head init", lambda b: b.cfg.finetune.head_init_std,
          show=_fmt_head),
    Param("labels", "labelled images", _labels),
    Param("optimizer", "optimizer", _optimizer),
    Param("lr_rule", "base LR and scaling rule", lambda b: (b.cfg.finetune.lr, "per 256"),
          show=lambda v: f"{v[0]:g} x batch/256"),
    Param("lr", "LR at the recipe's batch", _peak_lr),
    Param("weight_decay", "weight decay", lambda b: b.cfg.finetune.weight_decay),
    Param("no_decay", "parameters without weight decay", _no_decay),
    Param("layer_decay", "layer-wise LR decay", _layer_decay, lambda b: b.vit),
    Param("warmup", "warmup epochs", lambda b: b.cfg.finetune.warmup_epochs),
    Param("schedule", "LR schedule", _schedule, show=_fmt_schedule),
    Param("epochs", "epochs", lambda b: b.cfg.finetune.epochs),
    Param("batch", "batch (global)", lambda b: b.cfg.finetune.batch_size),
    Param("sampler", "images per epoch", lambda b: FT_SAMPLER),
    Param("bn", "BatchNorm across processes", lambda b: "SyncBN" if b.cfg.finetune.sync_bn
          else "per process", lambda b: not b.vit),
    Param("crop", "train crop", _crop),
    Param("flip_p", "horizontal flip probability", lambda b: b.cfg.finetune.flip_p),
    Param("rand_augment", "RandAugment", lambda b: b.cfg.finetune.rand_augment),
    Param("random_erasing", "random erasing probability",
          lambda b: b.cfg.finetune.random_erasing),
    Param("mix", "mixup / cutmix", _mix, show=_fmt_mix),
    Param("label_smoothing", "label smoothing", lambda b: b.cfg.finetune.label_smoothing),
    Param("drop_path", "drop path (stochastic depth), last block",
          lambda b: b.cfg.finetune.drop_path, lambda b: b.vit),
    Param("grad_clip", "gradient clipping", lambda b: b.cfg.finetune.grad_clip),
    Param("ema", "model EMA", lambda b: FT_EMA, lambda b: b.vit),
    Param("eval_view", "test view", lambda b: (
        f"Resize({b.cfg.data.load_size}) + CenterCrop({b.cfg.data.image_size})")),
]
PARAM = {p.key: p for p in PARAMS}


# --------------------------------------------------------------------------- official values
def _semisup(epochs: int, subset: str) -> dict[str, Official]:
    return {
        "backbone": Official("resnet50", B5),
        "head_init": Official(0.0, f"{SIMCLR} README.md", "`--zero_init_logits_layer=True`"),
        "labels": Official(f"the images of {subset}", f"{SIMCLR} imagenet_subsets/{subset}",
                           "12 or 13 images of each class" if subset.startswith("1p")
                           else "128 or 129 images of each class"),
        "optimizer": Official("SGD, Nesterov momentum 0.9", f"{B5}; {SIMCLR} model_util.py",
                              "`MomentumOptimizer(..., use_nesterov=True)`"),
        "lr_rule": Official((0.05, "per 256"), B5, "LearningRate = 0.05 x BatchSize/256"),
        "lr": Official(0.8, B5, "batch 4096"),
        "weight_decay": Official(0.0, B5, "no regularisation"),
        "no_decay": Official("none (no weight decay at all)", B5),
        "warmup": Official(0.0, B5, "no warmup"),
        "schedule": Official(("cosine", "step", 0.0), f"{SIMCLR} model_util.py",
                             "`learning_rate_schedule`: cosine decay per step"),
        "epochs": Official(epochs, B5, "60 on 1 %, 30 on 10 %"),
        "batch": Official(4096, B5),
        "sampler": Official("every labelled image once an epoch, the last partial batch dropped",
                            f"{SIMCLR} data.py", "`drop_remainder=is_training`"),
        "bn": Official("SyncBN", f"{SIMCLR} run.py", "`--global_bn=True` (TPU cross-replica BN)"),
        "crop": Official("random-resized crop of the whole image, scale (0.08, 1), bilinear",
                         f"{SIMCLR} data_util.py", "`random_crop_with_resize`: area (0.08, 1), "
                         "aspect (3/4, 4/3), then resize to 224"),
        "flip_p": Official(0.5, f"{SIMCLR} data_util.py"),
        "rand_augment": Official(None, f"{SIMCLR} data.py", "no colour distortion either "
                                 "(`color_distort=is_pretrain`)"),
        "random_erasing": Official(0.0, f"{SIMCLR} data_util.py"),
        "mix": Official((0.0, 0.0, 1.0, 0.5), f"{SIMCLR} data_util.py"),
        "label_smoothing": Official(0.0, f"{SIMCLR} objective.py"),
        "grad_clip": Official(None, f"{SIMCLR} model.py"),
        "eval_view": Official("Resize(256) + CenterCrop(224)", f"{SIMCLR} data_util.py",
                              "centre crop of proportion 0.875, resized to 224"),
    }


def _deit(model: str, epochs: int, epochs_source: str) -> dict[str, Official]:
    return {
        "backbone": Official(model, f"{V3} README.md", "MoCo-v3's ViT (ViT-S: 12 heads)"),
        "trained": Official(FT_TRAINED, f"{DEIT} main.py", "DeiT's model: patch_embed and "
                            "pos_embed are parameters"),
        "head_init": Official(0.02, f"{DEIT} main.py (timm 0.4.9 VisionTransformer)",
                              "`trunc_normal_(std=.02)`, truncated at +-2 (absolute): a plain "
                              "normal at this std"),
        "labels": Official("all", f"{V3} README.md", "ImageNet-1k"),
        "optimizer": Official("AdamW, betas (0.9, 0.999), eps 1e-08", f"{DEIT} main.py",
                              "`--opt adamw --opt-eps 1e-8`, timm's default betas"),
        "lr_rule": Official((2.5e-4, "per 256"), f"{DEIT} main.py",
                            "`--lr 5e-4` x batch/512, the same rule per 256"),
        "lr": Official(1e-3, f"{DEIT} main.py", "batch 1024"),
        "weight_decay": Official(0.05, f"{DEIT} main.py"),
        "no_decay": Official("biases, norms, class token, position embedding",
                             f"{DEIT} main.py (timm create_optimizer)",
                             "`filter_bias_and_bn` and the model's `no_weight_decay()`"),
        "layer_decay": Official(1.0, f"{DEIT} main.py", "none in DeiT; BEiT / MAE use it "
                                "(MAE ViT-B: 0.65, `finetune.layer_decay`)"),
        "warmup": Official(5.0, f"{DEIT} main.py"),
        "schedule": Official(("cosine", "epoch", 1e-5), f"{DEIT} main.py",
                             "timm's cosine scheduler stepped per epoch, `--min-lr 1e-5`"),
        "epochs": Official(epochs, epochs_source),
        "batch": Official(1024, f"{DEIT} README_deit.md", "4 GPUs x 256"),
        "sampler": Official("repeated augmentation: 3 views of each image an epoch",
                            f"{DEIT} main.py", "`RASampler`, `--repeated-aug` on by default"),
        "crop": Official("random-resized crop of the whole image, scale (0.08, 1), bicubic",
                         f"{DEIT} datasets.py", "timm `create_transform`, "
                         "`--train-interpolation bicubic`"),
        "flip_p": Official(0.5, f"{DEIT} datasets.py (timm create_transform)"),
        "rand_augment": Official("rand-m9-mstd0.5-inc1", f"{DEIT} main.py", "`--aa`"),
        "random_erasing": Official(0.25, f"{DEIT} main.py", "`--reprob 0.25 --remode pixel`"),
        "mix": Official((0.8, 1.0, 1.0, 0.5), f"{DEIT} main.py", "`timm.data.Mixup`, mode "
                        "batch; soft-target cross-entropy"),
        "label_smoothing": Official(0.1, f"{DEIT} main.py"),
        "drop_path": Official(0.1, f"{DEIT} main.py", "`--drop-path 0.1`"),
        "grad_clip": Official(None, f"{DEIT} main.py"),
        "ema": Official("kept (decay 0.99996); the model itself is evaluated",
                        f"{DEIT} main.py", "`ModelEma`"),
        "eval_view": Official("Resize(256) + CenterCrop(224)", f"{DEIT} datasets.py",
                              "`--eval-crop-ratio 0.875`, bicubic resize"),
    }


_SIMCLR_DELIBERATE = {
    "sampler": Deliberate(FT_SAMPLER, (
        "with few labels a dropped remainder is a large share of an epoch (at 1 % of "
        "Fashion-MNIST, 600 images in batches of 256, a sixth); the images that fill the last "
        "batch are the first of the epoch's order, so every image trains equally often.")),
    "crop": Deliberate("random-resized crop of the centre 256 px square, scale (0.08, 1), "
                       "bilinear", (
        "`finetune.augment: crop_flip` crops on the device from the 256 px square the loader "
        "decodes (as the linear probe does); `finetune.augment: timm` crops the whole image "
        "in the loader, SimCLR's view, at the cost of per-image work on the CPU.")),
}
_DEIT_DELIBERATE = {
    "schedule": Deliberate(("cosine", "step", 1e-5), (
        "the cosine is set per step (sslkit.train.optim.lr_factor), DeiT's per epoch; warmup "
        "from 1/warmup_steps of the LR instead of timm's 1e-6.")),
    "sampler": Deliberate(FT_SAMPLER, (
        "no repeated augmentation: DeiT needs it to train from scratch; a fine-tuning from a "
        "pretrained ViT runs at the normal sampler (MAE's main_finetune.py has none).")),
    "ema": Deliberate(FT_EMA, (
        "DeiT reports the accuracy of the model itself, not of its EMA: the EMA does not "
        "change the recipe's number.")),
}
_NOTES = {"eval_view": "sslkit resizes bilinearly with antialiasing (sslkit.augment.CenterView)"}


@dataclasses.dataclass(frozen=True)
class Recipe:
    config: str
    reference: str
    official: dict[str, Official]
    deliberate: dict[str, Deliberate] = dataclasses.field(default_factory=dict)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)


RECIPES: dict[str, Recipe] = {r.config: r for r in [
    Recipe("imagenet_semisup_r50_1pct", "SimCLR's semi-supervised fine-tuning of a ResNet-50 on "
           "1 % of ImageNet's labels (Chen et al. 2020, appendix B.5; BYOL and MoCo's "
           "successors report the same protocol).", _semisup(60, "1percent.txt"),
           _SIMCLR_DELIBERATE, _NOTES),
    Recipe("imagenet_semisup_r50_10pct", "The same protocol on 10 % of the labels.",
           _semisup(30, "10percent.txt"), _SIMCLR_DELIBERATE, _NOTES),
    Recipe("imagenet_finetune_vits", "MoCo-v3's end-to-end fine-tuning of its ViT-S: DeiT's "
           "default recipe (facebookresearch/moco-v3 README.md; published 81.4 top-1).",
           _deit("vit_small", 300, f"{DEIT} main.py: `--epochs 300`, the default; {V3} "
                 "README.md names an epoch count only for ViT-B"), _DEIT_DELIBERATE, _NOTES),
    Recipe("imagenet_finetune_vitb", "MoCo-v3's end-to-end fine-tuning of its ViT-B: DeiT's "
           "default recipe for 150 epochs (facebookresearch/moco-v3 README.md; published 83.2 "
           "top-1).", _deit("vit_base", 150, f"{V3} README.md: `--epochs 150`"),
           _DEIT_DELIBERATE, _NOTES),
]}


# --------------------------------------------------------------------------- comparison
@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    label: str
    sslkit: Any
    official: Official
    status: str   # "same", "deliberate", "mismatch" or "stale" (as in scripts/recipes.py)
    note: str

    def cells(self) -> list[str]:
        show = PARAM[self.key].show
        return [self.label, show(self.sslkit), show(self.official.value), self.official.source,
                self.note]


def finetune_configs() -> list[str]:
    return sorted(f.stem for f in ROOT.glob("configs/*.yaml") if f.stem.startswith(PREFIXES))


def compare(cfg: sslconfig.Config, recipe: Recipe) -> list[Row]:
    """One row per parameter that applies; a missing or extra official value is a KeyError
    (:func:`recipes.judge`)."""
    b = Built(cfg)
    return [Row(p.key, p.label, value, off, status, note)
            for p, value, off, status, note in judge([p for p in PARAMS if p.applies(b)], b,
                                                     recipe)]


def problems(rows: list[Row]) -> list[Row]:
    return [row for row in rows if row.status in ("mismatch", "stale")]


HEADER = """
# Fine-tuning recipes

`run_finetune.py --config configs/<recipe>.yaml` (docs/evaluation.md): the semi-supervised
protocol of SimCLR for ResNets and MoCo-v3's DeiT fine-tuning for ViTs, as sslkit resolves and
builds them (the network and optimizer `sslkit.evaluation.classifier` makes, on the meta
device), beside the official values. Generated by `scripts/recipes_finetune.py` through
`python scripts/recipes.py`, checked by `tests/test_recipes.py` like the pretraining recipes.

| repository | commit | what |
| --- | --- | --- |
"""


def render() -> str:
    out = [HEADER]
    out += [f"| {repo} | {commit} | {what} |\n" for repo, commit, what in SOURCES]
    for name in finetune_configs():
        if name not in RECIPES:
            raise KeyError(f"configs/{name}.yaml has no entry in scripts/recipes_finetune.py")
        recipe = RECIPES[name]
        rows = compare(sslconfig.load(ROOT / "configs" / f"{name}.yaml"), recipe)
        n_diff = sum(row.status == "deliberate" for row in rows)
        out.append(f"\n## {name}\n\n`configs/{name}.yaml`. Reference: {recipe.reference} "
                   f"{len(rows)} parameters, {n_diff} deliberate differences.\n\n")
        out.append("| parameter | sslkit (resolved) | official | source | note |\n")
        out.append("| --- | --- | --- | --- | --- |\n")
        for row in rows:
            out.append("| " + " | ".join(_cell(c) for c in row.cells()) + " |\n")
    return "".join(out)
