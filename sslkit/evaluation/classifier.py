"""What end-to-end fine-tuning trains and how: the backbone with a linear head, stochastic
depth, the optimizer's parameter groups (layer-wise LR decay), mixup / cutmix and the loss,
and one optimizer step.

**Network.** :class:`Classifier` = the configured backbone (the checkpoint's weights, or a
seeded random init for ``--baseline random-init``) + ``head = nn.Linear(D, classes)``
(weight ~ N(0, ``finetune.head_init_std``^2), bias 0; SimCLR zero-initialises it). Every
parameter trains, a ViT's patch projection and position embedding included: MoCo-v3 loads
its ViT into DeiT's model, whose patch embedding and position embedding are parameters.

**Stochastic depth** (``finetune.drop_path``, ViTs): timm's ``DropPath`` on both residual
branches of block i at rate ``drop_path * i / (depth - 1)`` (timm, DeiT). In sslkit's
torchvision ViT it follows the attention branch's dropout and ends the MLP (modules without
parameters: the key names stay torchvision's); in a ``timm/<name>`` ViT it is the block's
own ``drop_path1`` / ``drop_path2``.

**Layer-wise LR decay** (``finetune.layer_decay``, BEiT, MAE ``util/lr_decay.py``): with L
blocks, parameter layer i is 0 for the patch embedding, class token and position embedding,
j + 1 for block j and L + 1 for everything after the blocks (final norm, head); its LR is the
scheduled LR times ``layer_decay^(L + 1 - i)``. ``finetune.exclude_bias_norm`` takes weight
decay off 1-d parameters (biases, norms) and the class token and position embedding (timm's
``no_weight_decay`` names, DeiT and MAE).

**Loss.** With mixup or cutmix (``timm.data.Mixup``, mode "batch", label smoothing folded into
its soft targets) ``timm.loss.SoftTargetCrossEntropy``; else cross-entropy with
``finetune.label_smoothing`` (torch's, the formula of timm's ``LabelSmoothingCrossEntropy``).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sslkit.config import Config, FinetuneConfig
from sslkit.errors import ConfigError
from sslkit.io.checkpoint import load_into
from sslkit.io.layouts import match_names
from sslkit.models.backbones import backbone_from_config
from sslkit.train.optim import linear_scaled, lr_factor
from sslkit.train.runtime import autocast
from sslkit.train.step import TrainingDiverged


class Classifier(nn.Module):
    """``head(backbone(x))``: logits (B, classes); state-dict keys ``backbone.*``, ``head.*``
    (so :func:`sslkit.export.read_source` reads the fine-tuned backbone back)."""

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int,
                 head_init_std: float, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feat_dim, num_classes)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            self.head.weight.copy_(head_init_std * torch.randn(self.head.weight.shape,
                                                               generator=g))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).flatten(1))


def vit_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The transformer blocks of sslkit's ViT (torchvision) or a timm ViT; [] otherwise."""
    encoder = getattr(backbone, "encoder", None)
    if encoder is not None and hasattr(encoder, "layers"):
        return list(encoder.layers)
    return list(getattr(backbone, "blocks", None) or [])


def add_drop_path(backbone: nn.Module, rate: float) -> None:
    """Stochastic depth on every block's residual branches (module docstring)."""
    if rate <= 0:
        return
    blocks = vit_blocks(backbone)
    if not blocks:
        raise ConfigError(f"finetune.drop_path={rate:g} drops the residual branches of ViT "
                          f"blocks; this backbone has none: set finetune.drop_path=0")
    try:
        from timm.layers import DropPath  # the optional extra, only when asked for
    except ImportError:
        raise ConfigError("finetune.drop_path needs the optional package timm: pip install -e "
                          "'.[timm]'") from None
    rates = torch.linspace(0, rate, len(blocks), device="cpu").tolist()  # as timm's
    for block, r in zip(blocks, rates):
        if hasattr(block, "drop_path1"):  # timm's Block
            block.drop_path1, block.drop_path2 = DropPath(r), DropPath(r)
        else:  # torchvision's EncoderBlock: attention -> dropout -> + x; mlp -> + x
            block.dropout = nn.Sequential(block.dropout, DropPath(r))
            block.mlp.append(DropPath(r))


def build_classifier(cfg: Config, state: Optional[dict], source: str, num_classes: int
                     ) -> Classifier:
    """The backbone of ``cfg`` with ``state`` (None: the seeded random init) and a new head."""
    torch.manual_seed(cfg.run.seed)  # the random init of a baseline (and of any new weight)
    backbone, feat_dim = backbone_from_config(cfg)
    if state is not None:
        m = cfg.model
        arch = (f"{m.backbone}, width {m.width}, cifar_stem={str(m.cifar_stem).lower()}"
                if m.backbone.startswith("resnet") else f"{m.backbone}, patch {m.patch_size}"
                if m.backbone.startswith("vit") else m.backbone)
        load_into(backbone, match_names(state, backbone.state_dict()), source,
                  what=f"backbone ({arch}, {cfg.data.channels} input channels)")
    for p in backbone.parameters():
        p.requires_grad_(True)
    add_drop_path(backbone, cfg.finetune.drop_path)
    return Classifier(backbone, feat_dim, num_classes, cfg.finetune.head_init_std,
                      seed=cfg.run.seed)


# --------------------------------------------------------------------------- optimizer
NO_WEIGHT_DECAY = ("class_token", "encoder.pos_embedding", "cls_token", "pos_embed",
                   "dist_token", "reg_token")
_BLOCK = re.compile(r"(?:encoder\.layers\.encoder_layer_|blocks\.)(\d+)\.")
_EMBED = ("conv_proj.", "patch_embed.")


def layer_id(name: str, depth: int) -> int:
    """BEiT / MAE's layer of a :class:`Classifier` parameter (module docstring)."""
    if not name.startswith("backbone."):
        return depth + 1
    inner = name[len("backbone."):]
    if inner in NO_WEIGHT_DECAY or inner.startswith(_EMBED):
        return 0
    m = _BLOCK.match(inner)
    return int(m.group(1)) + 1 if m else depth + 1


def param_groups(model: nn.Module, ft: FinetuneConfig) -> list[dict]:
    """Trainable parameters in groups of one (layer, weight decay): each group carries its
    ``lr_scale`` (layer-wise decay; 1 without it) and ``weight_decay``."""
    depth = len(vit_blocks(model.backbone)) if isinstance(model, Classifier) else 0
    if ft.layer_decay < 1 and depth == 0:
        raise ConfigError(f"finetune.layer_decay={ft.layer_decay:g} scales the LR of ViT "
                          f"blocks; this backbone has none: set finetune.layer_decay=1")
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = ft.exclude_bias_norm and (p.ndim <= 1 or name.split(".", 1)[-1]
                                          in NO_WEIGHT_DECAY)
        layer = layer_id(name, depth) if ft.layer_decay < 1 else depth + 1
        group = groups.setdefault((layer, no_wd), {
            "params": [], "weight_decay": 0.0 if no_wd else ft.weight_decay,
            "lr_scale": ft.layer_decay ** (depth + 1 - layer),
            "name": f"layer_{layer}_{'no_decay' if no_wd else 'decay'}"})
        group["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, ft: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov when ``finetune.nesterov``) or AdamW at ``finetune.lr x batch / 256``,
    each group at that LR times its ``lr_scale``."""
    lr = linear_scaled(ft.lr, ft.batch_size)
    groups = param_groups(model, ft)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if ft.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=ft.momentum,
                               nesterov=ft.nesterov and ft.momentum > 0,
                               weight_decay=ft.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(ft.betas), eps=1e-8,
                             weight_decay=ft.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, ft: FinetuneConfig, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine (or constant), per step, to ``finetune.min_lr``."""
    warmup = int(round(ft.warmup_epochs * steps_per_epoch))
    peak = linear_scaled(ft.lr, ft.batch_size)
    floor = min(1.0, ft.min_lr / peak) if peak > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, ft.schedule, floor))


# --------------------------------------------------------------------------- loss and step
def build_mixup(ft: FinetuneConfig, num_classes: int):
    """``timm.data.Mixup`` for ``finetune.mixup`` / ``cutmix`` (None when both are 0)."""
    if ft.mixup <= 0 and ft.cutmix <= 0:
        return None
    try:
        from timm.data import Mixup  # the optional extra, only when asked for
    except ImportError:
        raise ConfigError("finetune.mixup / finetune.cutmix need the optional package timm: "
                          "pip install -e '.[timm]'") from None
    return Mixup(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, prob=ft.mixup_prob,
                 switch_prob=ft.mixup_switch_prob, mode="batch",
                 label_smoothing=ft.label_smoothing, num_classes=num_classes)


def build_criterion(ft: FinetuneConfig, mixing: bool) -> Callable:
    """``criterion(logits, targets)``: soft-target cross-entropy after mixup, else
    cross-entropy with label smoothing."""
    if mixing:
        from timm.loss import SoftTargetCrossEntropy  # timm is there: build_mixup needed it
        return SoftTargetCrossEntropy()
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=ft.label_smoothing)


@dataclasses.dataclass
class FinetuneStep:
    """One optimizer step on a batch: the device view (``transform``; None when the loader
    made it), mixup, forward under autocast, the loss, backward, gradient clipping, the
    optimizer and the LR schedule. ``model`` may be the DDP wrapper of ``params``' owner."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: Callable
    device: torch.device
    precision: str = "fp32"
    transform: Optional[nn.Module] = None
    mixup: Optional[Callable] = None
    grad_clip: Optional[float] = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int
                 ) -> tuple[torch.Tensor, float]:
        """(the loss, detached, on the device; the LR the step used)."""
        x = images.to(self.device, non_blocking=True)
        targets = torch.as_tensor(labels).to(self.device, torch.long)
        if self.transform is not None:
            with torch.no_grad():
                x = self.transform(x)
        if self.mixup is not None:
            x, targets = self.mixup(x, targets)
        lr = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0]["lr_scale"]
        with autocast(self.device, self.precision):
            logits = self.model(x)
        loss = self.criterion(logits.float(), targets)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"fine-tuning diverged: the loss is {loss.item()} at step "
                                   f"{step}; lower finetune.lr (or use fp32)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach(), lr

