"""Facts about each dataset (classes, channels, native size, normalisation) and the channel
and size rules every part of sslkit shares.

Normalisation statistics are per native channel in [0, 1] units. ``LUMA`` is the ITU-R BT.601
grey mix (PIL's ``convert("L")``, torchvision's ``rgb_to_grayscale``), used to read RGB data as
one channel, to adapt RGB statistics to it, and by the grayscale augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from sslkit.errors import ConfigError

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_side(image_size: int) -> int:
    """The side an image is resized to before its centre ``image_size`` crop: the
    Resize(256) + CenterCrop(224) ratio of the ImageNet evaluation protocol."""
    return round(image_size * 256 / 224)


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about a dataset in its native form.

    ``num_classes`` is None for ``imagefolder`` (known from the folders at build time) and
    ``native_size`` is None where the side is chosen by the config (``imagefolder``:
    ``load_size``; ``synthetic``: ``image_size``). ``mean``/``std`` are per native channel,
    in [0, 1] units.
    """

    num_classes: Optional[int]
    channels: int
    native_size: Optional[int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


_INFO: dict[str, DatasetInfo] = {
    # Fashion-MNIST train split statistics.
    "fashion_mnist": DatasetInfo(10, 1, 28, (0.2860,), (0.3530,)),
    # CIFAR train split, per-pixel std (not the often-copied 0.2023/0.1994/0.2010).
    "cifar10": DatasetInfo(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": DatasetInfo(10, 3, 96, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagefolder": DatasetInfo(None, 3, None, IMAGENET_MEAN, IMAGENET_STD),
    # Measured on the generated train split (2000 images, 32 px).
    "synthetic": DatasetInfo(10, 3, None, (0.465, 0.478, 0.473), (0.199, 0.190, 0.189)),
}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; an unknown name is a ConfigError."""
    try:
        return _INFO[name]
    except KeyError:
        raise ConfigError(f"unknown dataset '{name}'; valid: {', '.join(_INFO)}") from None


def normalization(name: str, channels: int, mean: Optional[Sequence[float]] = None,
                  std: Optional[Sequence[float]] = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` for ``channels`` output channels.

    Explicit values win (one value is broadcast to every channel). Otherwise the dataset's
    statistics, adapted: a 1-channel dataset read as 3 channels repeats its value; a
    3-channel dataset read as 1 channel uses the BT.601 luma mix ``sum_i w_i m_i`` of the
    means and, as an approximation, of the stds.
    """
    info = dataset_info(name)

    def adapt(given: Optional[Sequence[float]], native: tuple[float, ...]) -> tuple[float, ...]:
        if given is not None:
            vals = tuple(float(v) for v in given)
            if len(vals) == 1:
                return vals * channels
            if len(vals) != channels:
                raise ConfigError(f"got {len(vals)} normalisation values for {channels} channels")
            return vals
        if len(native) == channels:
            return native
        if len(native) == 1:
            return native * channels
        return luma_of(native)

    return adapt(mean, info.mean), adapt(std, info.std)


def luma_of(values: Sequence[float]) -> tuple[float]:
    """The BT.601 mix ``sum_i w_i v_i`` of three per-channel values, as a 1-tuple."""
    return (sum(w * v for w, v in zip(LUMA, values)),)


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, channels, H, W): repeat gray, or BT.601 luma of RGB."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)  # a view: no copy (read-only use)
    if c == 3 and channels == 1:
        out = torch.empty((images.shape[0], 1, *images.shape[2:]), dtype=torch.uint8)
        w = torch.tensor(LUMA).view(1, 3, 1, 1)
        for s in range(0, images.shape[0], 4096):  # chunked: no full float copy
            out[s:s + 4096] = (images[s:s + 4096].float() * w).sum(1, keepdim=True).round_().clamp_(0, 255)
        return out
    raise ConfigError(f"cannot convert {c}-channel images to {channels} channels; use 1 or 3")
