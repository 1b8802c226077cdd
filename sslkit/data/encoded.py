"""The protocol of a source of encoded images (``yields="files"``): what ImageFolder,
WebDataset shards and Parquet files have in common.

Such a source holds images as their files' bytes (JPEG, PNG, WebP, ... of their own sizes)
and decodes them one at a time, in the loader workers. The input path of a run takes any
:class:`EncodedImages` alike: crops of the whole decoded image for pretraining
(:mod:`sslkit.data.crops`: the bytes are decoded once per step in a worker, or handed to
nvjpeg), the square ``load_size`` view for evaluation (:meth:`EncodedImages.decode`). A
source gives:

* ``len(ds)``, ``ds.labels`` ((N,) int64; -1 where an item has no class), ``ds.classes``
  (the class names, index order; empty for unlabelled images);
* ``ds.read(i)``: the encoded bytes of item i, exactly as stored;
* ``ds.where(i)``: how a message names item i (a file path; ``shard.tar:member``;
  ``file.parquet row r``);
* ``ds.subset(indices)``: the same source restricted to those items, in that order.

Item i has a fixed place in the source (its index), so the seeded sampler
(:class:`sslkit.data.loaders.TrainSampler`), the per-image seeds of the crops and a
mid-epoch resume work for every source as they do for ImageFolder. Everything else (the
square decode, ``skip_corrupt``, the worker-side error reporting) lives here once.
"""
from __future__ import annotations

import io
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from sslkit.errors import DataError

T = TypeVar("T")


def open_image(src) -> Image.Image:
    """A PIL image of ``src``: encoded bytes, or a file path."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(src))
    return Image.open(src)


def to_square(im: Image.Image, size: int, channels: int) -> torch.Tensor:
    """``im`` (open, not yet decoded) as uint8 (C, size, size): converted to RGB (grayscale,
    palette and RGBA included; alpha dropped, as torchvision's loader does) or to L when
    ``channels=1``, the shorter side resized to ``size`` (bilinear, antialiased), the centre
    square kept."""
    mode = "L" if channels == 1 else "RGB"
    if im.format == "JPEG":
        im.draft(mode, (size, size))  # fast JPEG downscale (DCT scaling), never below size
    im = im.convert(mode)
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class EncodedImages(Dataset):
    """Base of the sources of encoded images (see the module docstring).

    A subclass sets up its items, calls ``super().__init__`` with their labels and class
    names, and implements :meth:`__len__`, :meth:`read`, :meth:`where` and :meth:`subset`.
    ``ds[i]`` is ``(uint8 (C, load_size, load_size), label)``. An undecodable item raises
    DataError naming it; with ``skip_corrupt`` the next decodable item (in index order) is
    used instead and the skipped one remembered in ``skipped``.
    """

    #: what the message about an undecodable item tells the user to do with it
    replace_hint = "delete or replace it"

    def __init__(self, source: str, labels: Sequence[int] | torch.Tensor, classes: list[str],
                 load_size: int, channels: int = 3, skip_corrupt: bool = False,
                 split: str = ""):
        self.name, self.split = source, split
        self.labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.load_size = int(load_size)
        self.channels = channels
        self.skip_corrupt = skip_corrupt
        self.skipped: set[str] = set()

    # ------------------------------------------------------------- what a source gives
    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> bytes:
        """The encoded bytes of item ``i``."""
        raise NotImplementedError

    def where(self, i: int) -> str:
        """How messages name item ``i``."""
        raise NotImplementedError

    def subset(self, indices: torch.Tensor) -> "EncodedImages":
        raise NotImplementedError

    # ------------------------------------------------------------- shared behaviour
    def decode(self, data) -> torch.Tensor:
        """Encoded bytes (or a path) -> uint8 (C, load_size, load_size); raises on bad data."""
        with open_image(data) as im:
            return to_square(im, self.load_size, self.channels)

    def first_decodable(self, i: int, decode: Callable[[bytes], T]
                        ) -> tuple[T, int, list[str], int]:
        """``(decode(bytes of item j), label of j, skipped names, j)`` with ``j = i`` unless
        item i fails: then DataError naming it, or with ``skip_corrupt`` the next items (in
        index order) are tried and the failed ones named in ``skipped``."""
        skipped: list[str] = []
        n = len(self)
        for k in range(n):
            j = (i + k) % n
            try:
                return decode(self.read(j)), int(self.labels[j]), skipped, j
            except DataError:
                raise
            except Exception as e:  # any reader or decoder failure (OSError, SyntaxError, bomb)
                if not self.skip_corrupt:
                    raise DataError(
                        f"{self.name}: cannot decode image '{self.where(j)}' ({type(e).__name__}: "
                        f"{e}); {self.replace_hint}, or set data.skip_corrupt=true to skip "
                        f"undecodable images") from None
                skipped.append(self.where(j))
        raise DataError(f"{self.name}: none of the {n} images of split '{self.split}' could be "
                        f"decoded (e.g. '{skipped[0]}')")

    def load(self, i: int) -> tuple[torch.Tensor, int, list[str]]:
        """``(image, label, skipped names)``; raises DataError on bad data unless skipping."""
        image, label, skipped, _ = self.first_decodable(i, self.decode)
        return image, label, skipped

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label, skipped = self.load(i)
        self.skipped.update(skipped)
        return image, label

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name}/{self.split}: {len(self)} images, "
                f"{self.num_classes} classes, load_size={self.load_size})")
