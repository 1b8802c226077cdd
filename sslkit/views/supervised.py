"""The training views of labelled images: the linear probe's and fine-tuning's.

:class:`CropFlip`, batched on the images' device (kornia): images larger than 64 px get a
``RandomResizedCrop(image_size, scale, ratio=(3/4, 4/3))`` + horizontal flip (MoCo-v2/v3
``main_lincls.py``; SimCLR's fine-tuning: "only random crop + flip"); images of at most
64 px (CIFAR, STL-10 at 64, Fashion-MNIST) a random crop with 4 px zero padding + flip, the
CIFAR recipe (DeiT's ``datasets.py`` swaps its crop for the same one at 32 px): a
random-resized crop at scale 0.08 throws away most of a 32 px image. Small images of another
size are first resized whole to ``image_size`` (as the eval view does).

:func:`timm_train_transform` and :class:`TimmTrainImages`, per image in the loader: timm's
training transform (``timm.data.create_transform``, as DeiT's ``build_transform``): a
random-resized crop of the whole image, flip, RandAugment, normalisation, random erasing;
at most 64 px the padded crop instead of the resized one. Each image's random draws are
seeded by ``(run seed, epoch, index)``, so a resumed run draws what the uninterrupted one
did, whichever loader process makes it. timm is the optional extra (imported only here, when
asked for).
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Optional, Sequence

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from sslkit.augment import Normalized
from sslkit.errors import ConfigError

SMALL_IMAGE_MAX = 64  # <= this side: CIFAR-style padded crop; above: random-resized crop


class CropFlip(Normalized):
    """The random crop + flip of the module docstring, then normalisation:
    ``forward(images uint8 or [0, 1] (B, C, H, W)) -> (B, C, S, S)`` float, normalised."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float],
                 channels: int, small: bool | None = None,
                 scale: Sequence[float] = (0.08, 1.0), flip_p: float = 0.5,
                 resample: str = "bilinear"):
        super().__init__(image_size, channels, mean, std)
        self.small = image_size <= SMALL_IMAGE_MAX if small is None else small
        size = (image_size, image_size)
        if self.small:
            crop = K.RandomCrop(size, padding=4, fill=0, padding_mode="constant", p=1.0,
                                same_on_batch=False, cropping_mode="slice")
        else:
            crop = K.RandomResizedCrop(size, scale=tuple(scale), ratio=(3 / 4, 4 / 3),
                                       resample=resample.upper(), align_corners=False, p=1.0,
                                       same_on_batch=False, cropping_mode="resample")
        self.aug = nn.Sequential(crop, K.RandomHorizontalFlip(p=flip_p, same_on_batch=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        if self.small and x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return self.normalize(self.aug(x))


class _SquareResize:
    """Resize a PIL image to ``size`` x ``size`` unless it already is (small images)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img):
        if img.size == (self.size, self.size):
            return img
        return img.resize((self.size, self.size), resample=2)  # PIL.Image.BILINEAR


def _posterize(img, bits_to_keep: int, **_: Any):
    """timm's posterize op with the 0-bit case of the Pillow DeiT ran on (a black image):
    Pillow >= 10 refuses 0 bits, which RandAugment's PosterizeIncreasing reaches at magnitude
    10 (``m9-mstd0.5`` draws it about 2 % of the times the op runs)."""
    from PIL import Image, ImageOps  # PIL: only on this per-image path

    if bits_to_keep >= 1:
        return ImageOps.posterize(img, bits_to_keep)
    return Image.new(img.mode, img.size)


def timm_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float], *,
                         scale: Sequence[float] = (0.08, 1.0), flip_p: float = 0.5,
                         interpolation: str = "bicubic", rand_augment: Optional[str] = None,
                         random_erasing: float = 0.0):
    """timm's training transform of a PIL RGB image -> normalised (3, S, S) float tensor
    (``mean`` / ``std`` per RGB channel); see the module docstring."""
    try:
        from timm.data import create_transform  # the optional extra, only when asked for
        from torchvision import transforms as T  # torchvision: only on this path
    except ImportError:
        raise ConfigError("finetune.augment=timm needs the optional package timm: pip install "
                          "-e '.[timm]'") from None
    try:
        tf = create_transform(input_size=image_size, is_training=True, scale=tuple(scale),
                              hflip=flip_p, color_jitter=None, auto_augment=rand_augment,
                              interpolation=interpolation, mean=tuple(mean), std=tuple(std),
                              re_prob=random_erasing, re_mode="pixel", re_count=1)
    except (AssertionError, ValueError, KeyError) as e:
        raise ConfigError(f"finetune.rand_augment={rand_augment!r} is not a timm RandAugment "
                          f"string (e.g. rand-m9-mstd0.5-inc1): {e}") from None
    for t in tf.transforms:
        for op in getattr(t, "ops", ()):
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize
    if image_size <= SMALL_IMAGE_MAX:  # DeiT's datasets.py: RandomCrop(padding=4) when small
        tf.transforms[0] = T.Compose([_SquareResize(image_size),
                                      T.RandomCrop(image_size, padding=4)])
    return tf


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's draws in one epoch (distinct for every (seed, epoch, index))."""
    return ((int(seed) * 0x9E3779B1 + int(epoch)) * 0x85EBCA77 + int(index)) % (2 ** 63)


@contextlib.contextmanager
def _seeded(seed: int):
    """Python, NumPy and torch seeded inside the block; their streams restored after it."""
    py, npst, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npst)
        torch.set_rng_state(th)


def _to_pil(image: torch.Tensor):
    """uint8 (C, H, W), C in {1, 3} -> a PIL RGB image."""
    from PIL import Image  # PIL: only on this per-image path

    arr = image.expand(3, -1, -1) if image.shape[0] == 1 else image
    return Image.fromarray(arr.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


class TimmTrainImages(Dataset):
    """The training split through a per-image ``transform`` (of a PIL RGB image), keyed by
    ``(epoch, index)`` (:class:`EpochKeys`): ``load(key) -> (image (channels, S, S) float,
    label, skipped files)``. ``files``: the source yields image files (whole images decoded
    here, undecodable ones handled by the dataset's ``first_decodable``); else its uint8
    tensors are converted. One channel: the transform runs on the grey RGB image and the first
    channel is kept."""

    def __init__(self, base: Any, transform, channels: int, files: bool, seed: int):
        self.base, self.transform, self.channels = base, transform, channels
        self.files, self.seed = files, seed
        self.labels = base.labels

    def __len__(self) -> int:
        return len(self.base)

    def _decode(self, path: str) -> torch.Tensor:
        from PIL import Image  # PIL: only on this per-image path

        with Image.open(path) as im:
            return self.transform(im.convert("RGB"))

    def load(self, key) -> tuple[torch.Tensor, int, list[str]]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        with _seeded(sample_seed(self.seed, epoch, i)):
            if self.files:
                image, label, skipped = self.base.first_decodable(int(i), self._decode)
            else:
                raw, label = self.base[int(i)]
                image, skipped = self.transform(_to_pil(raw)), []
        return image[:self.channels], int(label), skipped

    def __getitem__(self, key) -> tuple[torch.Tensor, int]:
        image, label, _ = self.load(key)
        return image, label


class EpochKeys(Sampler):
    """A sampler's indices as ``(epoch, index)`` keys (for :class:`TimmTrainImages`), with
    its ``set_epoch`` / ``set_start``."""

    def __init__(self, sampler: Any):
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def set_start(self, batch_index: int, batch_size: int) -> None:
        self.sampler.set_start(batch_index, batch_size)

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)
