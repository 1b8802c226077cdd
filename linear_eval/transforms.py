"""The linear probe's train-time view, made on the images' device: the random crop + flip of
:class:`sslkit.views.supervised.CropFlip` at the probe's fixed settings.

Images larger than 64 px: ``RandomResizedCrop(image_size, scale=(0.08, 1), ratio=(3/4, 4/3))``
+ horizontal flip (MoCo-v2/v3 ``main_lincls.py``). Images of at most 64 px (CIFAR, STL-10 at
64, Fashion-MNIST): random crop with 4 px zero padding + flip, the CIFAR recipe of
supervised/linear training — RRC at scale 0.08 throws away most of a 32 px image. Small images
of another size are first resized whole to ``image_size`` (as the eval view does). The eval
view is :class:`sslkit.augment.CenterView`.
"""
from __future__ import annotations

from typing import Sequence

from sslkit.views.supervised import SMALL_IMAGE_MAX, CropFlip

__all__ = ["SMALL_IMAGE_MAX", "ProbeTrainTransform"]


class ProbeTrainTransform(CropFlip):
    """The probe's random crop + flip (scale (0.08, 1), flip p 0.5, bilinear), then
    normalisation (see the module docstring)."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float],
                 channels: int, small: bool | None = None):
        super().__init__(image_size, mean, std, channels, small=small)
