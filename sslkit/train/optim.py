"""Optimizers (SGD, LARS, AdamW), parameter groups and the two step-based schedules: the LR
(warmup + cosine) and MoCo-v3's EMA momentum (cosine 0.99 -> 1).

Schedules are pure functions of the global step; the LR one is wrapped in
``torch.optim.lr_scheduler.LambdaLR`` so that its state (the step) is saved and a resumed run
continues exactly.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from sslkit.config import OptimConfig


def linear_scaled(lr: float, batch_size: int) -> float:
    """The linear scaling rule (Goyal et al. 2017): ``lr`` is given for a batch of 256."""
    return lr * batch_size / 256


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """The pretraining LR: ``optim.lr`` linearly scaled by the global batch (``lr_scaling:
    linear``) or as given (``none``)."""
    return linear_scaled(cfg.lr, global_batch) if cfg.lr_scaling == "linear" else cfg.lr


def _is_bias_or_norm(p: nn.Parameter) -> bool:
    return p.ndim <= 1  # biases, BN/LN weights and biases (MoCo-v3's LARS rule: ndim == 1)


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Trainable parameters (frozen ones, e.g. a `batchformer.frozen` BatchFormer, and the
    momentum encoder are left out: no group of their own).

    LARS (and ``exclude_bias_norm``) puts biases and norm parameters in a group with no weight
    decay and no LARS adaptation. A submodule with an ``optim_group`` attribute (a dict:
    ``name``, ``lr_scale``, ``weight_decay`` or None for ``optim.weight_decay``; the methods
    set it on the BatchFormer from ``batchformer.lr_scale`` / ``batchformer.weight_decay``)
    gets its parameters into groups of their own, after the others (split the same way).
    Every group has ``lr_scale``: :func:`build_optimizer` sets its LR to the scaled LR times it.
    """
    split = cfg.name == "lars" or cfg.exclude_bias_norm
    special = [m for m in model.modules() if isinstance(getattr(m, "optim_group", None), dict)]
    claimed = {id(p): m for m in special for p in m.parameters()}
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            owner = id(claimed[id(p)]) if id(p) in claimed else 0
            buckets.setdefault((owner, split and _is_bias_or_norm(p)), []).append(p)
    groups = []
    for name, owner, scale, wd in [("base", 0, 1.0, cfg.weight_decay)] + [
            (m.optim_group["name"], id(m), float(m.optim_group["lr_scale"]),
             cfg.weight_decay if m.optim_group["weight_decay"] is None
             else float(m.optim_group["weight_decay"])) for m in special]:
        if owner == 0 or buckets.get((owner, False)):
            groups.append({"params": buckets.get((owner, False), []), "weight_decay": wd,
                           "lars_exclude": False, "lr_scale": scale, "name": name})
        if buckets.get((owner, True)):
            groups.append({"params": buckets[(owner, True)], "weight_decay": 0.0,
                           "lars_exclude": True, "lr_scale": scale,
                           "name": f"{name}_bias_norm"})
    return groups


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as used by MoCo-v3 / BYOL.

    For a parameter p with gradient g (groups with ``lars_exclude`` skip the first two lines)::

        g <- g + wd * p
        g <- g * (eta * ||p|| / ||g||)        (trust ratio; 1 when either norm is 0)
        mu <- momentum * mu + g
        p <- p - lr * mu
    """

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 0.0,
                 momentum: float = 0.9, eta: float = 0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if not g["lars_exclude"]:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    p_norm, d_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(p_norm)
                    q = torch.where(p_norm > 0, torch.where(d_norm > 0,
                                                            g["eta"] * p_norm / d_norm, one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
        return loss


def build_optimizer(model: nn.Module, cfg: OptimConfig, global_batch: int) -> torch.optim.Optimizer:
    lr = scaled_lr(cfg, global_batch)
    groups = param_groups(model, cfg)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                    eta=cfg.lars_eta)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas),
                                 weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}")  # the config schema prevents this


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str,
              min_ratio: float = 0.0) -> float:
    """Multiplier of the peak LR at ``step`` (0-based): linear warmup from ~0, then cosine
    decay to ``min_ratio`` (or constant). Pure function of the step."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_steps(cfg: OptimConfig, steps_per_epoch: int) -> int:
    """The steps of the LR warmup (``optim.warmup_epochs``)."""
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = warmup_steps(cfg, steps_per_epoch)
    peak = optimizer.param_groups[0]["lr"]
    min_ratio = min(1.0, cfg.min_lr / peak) if peak > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.schedule, min_ratio))



def cosine_momentum(step: int, total_steps: int, base: float = 0.99,
                    final: float = 1.0) -> float:
    """MoCo-v3's momentum schedule: final - (final - base) * (cos(pi * step / total) + 1) / 2.

    Equals ``base`` at step 0 and ``final`` at ``total_steps`` (and beyond).
    """
    if total_steps <= 0 or step >= total_steps:
        return float(final)
    return final - (final - base) * (math.cos(math.pi * step / total_steps) + 1) / 2
