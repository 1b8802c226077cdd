"""The data sources: the registry (``@register_dataset``) of each dataset's loader with its
facts (classes, channels, native size, normalisation, what it yields), and the channel and
size rules every part of sslkit shares.

A source yields either fixed-size ``uint8`` tensors (``yields="tensors"``: Fashion-MNIST,
CIFAR, STL-10, synthetic; every random op of the views runs batched on the device) or images
of their own sizes decoded per sample from files (``yields="files"``: an image folder; the
loader cuts the random-resized crops from the whole decoded image, evaluation resizes to
``data.load_size`` and takes the centre crop). The input path of a run is chosen by this,
never by the dataset's name.

Normalisation statistics are per native channel in [0, 1] units. ``LUMA`` is the ITU-R BT.601
grey mix (PIL's ``convert("L")``, torchvision's ``rgb_to_grayscale``), used to read RGB data as
one channel, to adapt RGB statistics to it, and by the grayscale augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Sequence

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
    yields: Literal["tensors", "files"] = "tensors"

    @property
    def files(self) -> bool:
        """Images of their own sizes, decoded per sample (crops of the original image)."""
        return self.yields == "files"


@dataclass(frozen=True)
class Source:
    """A registered dataset: its loader (a :class:`sslkit.data.datasets.Request` -> the whole
    split as a Dataset of ``(uint8 (C, H, W), int label)``) and its facts."""

    name: str
    load: Callable[[Any], Any]
    info: DatasetInfo


SOURCES: dict[str, Source] = {}


def register_dataset(name: str, info: DatasetInfo) -> Callable[[Callable], Callable]:
    """Decorator of a loader: ``data.name: <name>`` reads the dataset with it."""
    def add(load: Callable) -> Callable:
        if name in SOURCES and SOURCES[name].load is not load:
            raise ValueError(f"dataset name '{name}' is registered already")
        SOURCES[name] = Source(name, load, info)
        return load
    return add


def source(name: str) -> Source:
    """The source registered as ``name``; an unknown name is a one-line ConfigError."""
    if name not in SOURCES:
        raise ConfigError(f"data.name={name} is invalid: expected one of "
                          f"{', '.join(repr(n) for n in SOURCES)}")
    return SOURCES[name]


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; an unknown name is a ConfigError."""
    return source(name).info


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
