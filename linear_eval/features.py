"""Feature extraction for evaluation, and the probe's device-side train-time view.

Images arrive as fixed-size uint8 (B, C, H, W) tensors (or floats in [0, 1]); every transform
here runs on the images' device. The evaluation view is :class:`sslkit.augment.CenterView`
(``eval_transform_from_config``): centre crop (ImageFolder: Resize 256 + CenterCrop 224),
resize to ``image_size``, normalise; a no-op crop for fixed-size small data.

* :class:`ProbeTrainTransform` — the probe's train-time augmentation. Images larger than 64 px:
  ``RandomResizedCrop(image_size, scale=(0.08, 1), ratio=(3/4, 4/3))`` + horizontal flip
  (MoCo-v2/v3 ``main_lincls.py``). Images of at most 64 px (CIFAR, STL-10 at 64,
  Fashion-MNIST): random crop with 4 px zero padding + flip, the CIFAR recipe of
  supervised/linear training — RRC at scale 0.08 throws away most of a 32 px image. Small
  images of another size are first resized whole to ``image_size`` (as the eval view does).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import kornia.augmentation as K
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslkit.augment import Normalized
from sslkit.engine import autocast

SMALL_IMAGE_MAX = 64  # <= this side: CIFAR-style crop; above: RandomResizedCrop


class ProbeTrainTransform(Normalized):
    """The probe's random crop + flip, then normalisation (see the module docstring)."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float],
                 channels: int, small: bool | None = None):
        super().__init__(image_size, channels, mean, std)
        self.small = image_size <= SMALL_IMAGE_MAX if small is None else small
        size = (image_size, image_size)
        if self.small:
            crop = K.RandomCrop(size, padding=4, fill=0, padding_mode="constant", p=1.0,
                                same_on_batch=False, cropping_mode="slice")
        else:
            crop = K.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                       resample="BILINEAR", align_corners=False, p=1.0,
                                       same_on_batch=False, cropping_mode="resample")
        self.aug = nn.Sequential(crop, K.RandomHorizontalFlip(p=0.5, same_on_batch=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        if self.small and x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return self.normalize(self.aug(x))


def iterate_batches(data, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``data``: an ``(images, labels)`` tensor pair (sliced in order) or any
    iterable of ``(images, labels)`` batches (e.g. a DataLoader), passed through."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data
        for s in range(0, images.shape[0], batch_size):
            yield images[s:s + batch_size], labels[s:s + batch_size]
    else:
        yield from data


def num_samples(data) -> int | None:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
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
    ``precision``; ``transform`` (e.g. :class:`sslkit.augment.CenterView`) runs on ``device`` before the
    backbone. Outputs with more than 2 dims are flattened. The backbone's train/eval mode is
    restored afterwards.
    """
    torch.set_flush_denormal(True)  # CPU: denormals made extraction ~3x slower (REFERENCES)
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    total = num_samples(data)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)
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
    finally:
        if bar is not None:
            bar.close()
        backbone.train(was_training)
    if not feats:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)

