"""The linear probe's train-time view, made on the images' device.

Images larger than 64 px: ``RandomResizedCrop(image_size, scale=(0.08, 1), ratio=(3/4, 4/3))``
+ horizontal flip (MoCo-v2/v3 ``main_lincls.py``). Images of at most 64 px (CIFAR, STL-10 at
64, Fashion-MNIST): random crop with 4 px zero padding + flip, the CIFAR recipe of
supervised/linear training — RRC at scale 0.08 throws away most of a 32 px image. Small images
of another size are first resized whole to ``image_size`` (as the eval view does). The eval
view is :class:`sslkit.augment.CenterView`.
"""
from __future__ import annotations

from typing import Sequence

import kornia.augmentation as K
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslkit.augment import Normalized

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
