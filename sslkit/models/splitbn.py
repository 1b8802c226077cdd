"""Split BatchNorm: batch statistics per group of samples, as if the batch were spread over
``splits`` devices.

MoCo needs shuffle-BN: if the query and its positive key are normalised with the statistics
of the same samples, the model can recognise the positive through the batch statistics
instead of the image content (He et al. 2020, Sec. 3.3). Across processes the key batch is
shuffled between devices; in ONE process the same effect needs per-group statistics plus a
shuffle of the key batch (the approach of the official MoCo CIFAR-10 demo). Groups are the
samples with equal index mod ``splits``. In eval mode this is plain BatchNorm, and the
parameters and buffers have BatchNorm's names, so state dicts load into torchvision models.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class _SplitBN:
    """Training forward with per-group statistics, shared by the 1-d and 2-d variants."""

    splits: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.splits
        if not self.training or s == 1:
            return super().forward(x)
        n, c = x.shape[:2]
        if n % s:
            raise ValueError(f"{type(self).__name__}: batch {n} is not divisible by {s} splits")
        track = self.track_running_stats  # off: batch statistics only, as torch's BatchNorm
        mean = self.running_mean.repeat(s) if track else None
        var = self.running_var.repeat(s) if track else None
        out = F.batch_norm(x.reshape(n // s, c * s, *x.shape[2:]), mean, var,
                           self.weight.repeat(s) if self.affine else None,
                           self.bias.repeat(s) if self.affine else None, True,
                           self.momentum if self.momentum is not None else 0.1, self.eps)
        if track:
            with torch.no_grad():
                self.running_mean.copy_(mean.view(s, c).mean(dim=0))
                self.running_var.copy_(var.view(s, c).mean(dim=0))
                self.num_batches_tracked.add_(1)
        return out.view(x.shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", splits={self.splits}"


class SplitBatchNorm2d(_SplitBN, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are computed over ``splits`` groups.

    x (N, C, H, W), N divisible by ``splits``: group s holds the samples n with n mod splits
    = s; each is normalised with its group's mean/var; the running statistics move towards
    the average of the groups' statistics.
    """

    def __init__(self, num_features: int, splits: int, **kw):
        super().__init__(num_features, **kw)
        self.splits = int(splits)


class SplitBatchNorm1d(_SplitBN, nn.BatchNorm1d):
    """The same for (N, C) features (projector heads)."""

    def __init__(self, num_features: int, splits: int, **kw):
        super().__init__(num_features, **kw)
        self.splits = int(splits)


def convert_split_bn(module: nn.Module, splits: int) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d`` in ``module`` (in place) by its split variant with
    the same parameters and buffers; returns ``module``."""
    kinds = {nn.BatchNorm2d: SplitBatchNorm2d, nn.BatchNorm1d: SplitBatchNorm1d}
    for name, child in module.named_children():
        if type(child) in kinds and child.track_running_stats:
            new = kinds[type(child)](child.num_features, splits, eps=child.eps,
                                     momentum=child.momentum, affine=child.affine)
            new.load_state_dict(child.state_dict())
            new.to(child.running_mean.device)
            setattr(module, name, new)
        else:
            convert_split_bn(child, splits)
    return module


@contextlib.contextmanager
def splits_set(module: nn.Module, splits: int) -> Iterator[None]:
    """Inside: every split BatchNorm of ``module`` uses ``splits`` groups (1: plain
    BatchNorm), e.g. while a micro-batch that is itself one group runs through it."""
    found = [m for m in module.modules() if isinstance(m, _SplitBN)]
    saved = [m.splits for m in found]
    for m in found:
        m.splits = int(splits)
    try:
        yield
    finally:
        for m, s in zip(found, saved):
            m.splits = s


def from_groups(parts: list[tuple[slice, torch.Tensor]], batch: int) -> torch.Tensor:
    """The rows of a batch of ``batch`` assembled from its groups ``(index slice, rows)``,
    e.g. the strided micro-batches ``x[m::M]`` of ``train.micro_batch``."""
    out = parts[0][1].new_empty(batch, *parts[0][1].shape[1:])
    for group, rows in parts:
        out[group] = rows
    return out
