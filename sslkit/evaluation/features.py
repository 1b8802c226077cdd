"""Frozen features of a backbone over a whole split: the kNN bank and queries (online and in
``run_lincls``) and the cached linear probe.

Data arrive as an ``(images, labels)`` tensor pair or as a loader of such batches; images are
fixed-size uint8 (B, C, H, W) tensors (or floats in [0, 1]). The ``transform`` (e.g. the
evaluation view :class:`sslkit.augment.CenterView`) runs on the images' device.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from sslkit.data.loaders import close_loader, tensor_pair
from sslkit.train.metrics import progress_bar
from sslkit.train.runtime import autocast


def iterate_batches(data, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``data``: an ``(images, labels)`` tensor pair (sliced in order) or any
    iterable of ``(images, labels)`` batches (e.g. a DataLoader), passed through."""
    pair = tensor_pair(data) if isinstance(data, (tuple, list)) else None
    if pair is None:
        yield from data
        return
    images, labels = pair
    for s in range(0, images.shape[0], batch_size):
        yield images[s:s + batch_size], labels[s:s + batch_size]


def num_samples(data) -> int | None:
    """Number of images in ``data`` (a tensor pair or a loader over a sized dataset)."""
    if isinstance(data, (tuple, list)) and tensor_pair(data) is not None:
        return int(data[0].shape[0])
    ds = getattr(data, "dataset", None)
    return len(ds) if ds is not None and hasattr(ds, "__len__") else None


@torch.no_grad()
def extract_features(backbone: nn.Module, data, device: torch.device, precision: str = "fp32",
                     transform: nn.Module | None = None, batch_size: int = 256,
                     progress: bool = False, desc: str = "features"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of every image: ``(features (N, D) float32 CPU, labels (N,) int64)``.

    ``backbone.eval()`` (BN uses its running statistics), ``torch.no_grad()``, autocast for
    ``precision``; ``transform`` runs on ``device`` before the backbone, outside autocast.
    Outputs with more than 2 dims are flattened. The backbone's train/eval mode is restored
    afterwards.
    """
    torch.set_flush_denormal(True)  # CPU: denormals made extraction ~3x slower
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    bar = progress_bar(num_samples(data), desc, "img", progress)
    try:
        for images, y in iterate_batches(data, batch_size):
            x = images.to(device, non_blocking=True)
            if transform is not None:
                x = transform(x)  # fp32, outside autocast
            with autocast(device, precision):
                f = backbone(x)
            feats.append(f.flatten(1).float().cpu())
            labels.append(torch.as_tensor(y).long().cpu())
            if bar is not None:
                bar.update(x.shape[0])
    except BaseException:
        close_loader(data)  # a worker loader's processes, held by the traceback otherwise
        raise
    finally:
        if bar is not None:
            bar.close()
        backbone.train(was_training)
    if not feats:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)
