"""The method as a run trains it: built from the resolved config, on its device and memory
format, with the switches that trade time for memory or compile time for speed
(``train.micro_batch``, ``model.grad_checkpointing``, ``run.compile``), and wrapped in DDP
under torchrun (not with micro-batches: :mod:`sslkit.train.microbatch` all-reduces the
gradients itself, once per step). The lines a run prints about these switches come from here.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from sslkit.config import Config
from sslkit.errors import ConfigError
from sslkit.methods import build_method
from sslkit.models.recompute import disable_grad_checkpointing, enable_grad_checkpointing
from sslkit.train.runtime import compile_with_fallback


@dataclasses.dataclass
class TrainingModel:
    """``method`` (the module whose state a checkpoint holds), ``model`` (what the step
    calls: the method or its DDP wrapper) and the ``lines`` the run header prints."""

    method: nn.Module
    model: nn.Module
    lines: list[str]


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def micro_batch_lines(cfg: Config, method: nn.Module, local_batch: int, world: int) -> list[str]:
    """Refuse a micro-batch that cannot compute the step; say what it computes."""
    n = cfg.train.micro_batch
    if n is None or n >= local_batch:
        return []
    if local_batch % n:
        raise ConfigError(f"train.micro_batch={n} must divide the per-process batch "
                          f"{local_batch} (train.batch_size={cfg.train.batch_size} over {world} "
                          f"process(es)); e.g. --set train.micro_batch="
                          f"{max(d for d in range(1, n + 1) if local_batch % d == 0)}")
    count = local_batch // n
    splits = getattr(method, "bn_splits", 1)
    if splits > 1 and splits != count:
        raise ConfigError(f"train.micro_batch={n} makes {count} micro-batches of the per-process "
                          f"batch {local_batch}, and in one process they are the BatchNorm groups "
                          f"of MoCo-v2's shuffle-BN, but method.bn_splits={splits}; set "
                          f"--set method.bn_splits={count}, or train.micro_batch="
                          f"{local_batch // splits}")
    plain = getattr(method, "accumulates_plainly", False)
    how = ("plain accumulation (the loss is per sample given the queue: one forward and backward "
           "per micro-batch)" if plain else "gradient caching (the backbone runs twice: features "
           "first, then again with gradients)")
    lines = [f"micro-batches: {count} x {n} images per process, {how}"]
    if _has_batchnorm(method.backbone):
        sync = (" (method.sync_bn synchronises each micro-batch's statistics over the "
                "processes, not the whole batch's)" if cfg.method.sync_bn else "")
        lines.append(f"note: train.micro_batch={n}: the backbone's BatchNorm normalises each "
                     f"micro-batch of {n} images, as {count * world} processes of {n} without "
                     f"SyncBN would{sync}; everything that mixes samples (heads' BatchNorm, "
                     f"BatchFormer, contrast, queue) sees the whole per-process batch of "
                     f"{local_batch}")
    return lines


def training_model(cfg: Config, device: torch.device, distributed: bool, local_batch: int,
                   world: int) -> TrainingModel:
    """The method of the resolved ``cfg`` ready to train on ``device`` (see the module doc)."""
    method = build_method(cfg)
    lines = micro_batch_lines(cfg, method, local_batch, world)
    micro = bool(lines)
    if distributed and cfg.method.sync_bn:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    method = method.to(device)
    if cfg.run.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if cfg.model.grad_checkpointing:
        enable_grad_checkpointing(method.backbone)
        disable_grad_checkpointing(method.momentum_backbone)  # no gradients there
    if cfg.run.compile:
        compile_with_fallback(method.backbone, "online backbone")
        compile_with_fallback(method.momentum_backbone, "momentum backbone")
    model = method
    if distributed and not micro:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(method, device_ids=ids)
    return TrainingModel(method, model, lines)
