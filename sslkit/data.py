"""Datasets and loaders: fixed-size ``uint8`` CHW images + integer labels.

Every dataset returned by :func:`build_dataset` yields ``(image, label)`` with ``image`` a
``uint8`` tensor ``(C, H, W)`` of one fixed size per dataset and ``label`` an ``int``
(``-1`` for STL-10's unlabeled images). All randomness of the views happens later, batched
on the training device (:mod:`sslkit.augment`); the CPU only decodes.

* ``fashion_mnist``, ``cifar10``, ``cifar100``, ``stl10`` and ``synthetic`` are held in memory
  as one tensor per split (``.images`` ``(N, C, H, W)`` uint8, ``.labels`` ``(N,)`` int64), so
  :func:`build_loader` indexes whole batches in-process, without worker processes.
* ``imagefolder`` decodes each file with PIL in DataLoader workers and resizes it to a fixed
  square ``load_size``: the shorter side is resized to ``load_size`` (bilinear, antialiased)
  and the centre square is kept. Random crops are then taken from that square on the device,
  whereas the reference ImageNet recipes crop the original (full, non-square) image: the
  crops here never see the borders that the centre square drops (for a 4:3 photo, 1/8 of
  the width on each side), and their resolution is capped at ``load_size``. The evaluation
  view (centre crop ``image_size`` of the ``load_size`` square) equals the usual
  Resize(256)+CenterCrop(224) exactly.

Channels: ``channels=3`` repeats grayscale data (Fashion-MNIST) to three channels;
``channels=1`` converts RGB data to luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601,
as PIL's ``convert("L")``), rounded to uint8.

Missing or unreadable data raises :class:`~sslkit.errors.DataError` with a one-line message
naming the dataset, the paths tried and how to get the data. A worker never crashes on a bad
file: the failure travels back as data and is raised (or counted, with ``skip_corrupt``) in
the main process.
"""
from __future__ import annotations

import gzip
import logging
import math
import os
import pickle
import random
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sslkit.errors import ConfigError, DataError

log = logging.getLogger("sslkit.data")

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 (PIL "L", torchvision rgb_to_grayscale)
SPLITS = ("pretrain", "train", "test")


# --------------------------------------------------------------------------- dataset facts
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


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_INFO: dict[str, DatasetInfo] = {
    # Fashion-MNIST train split statistics.
    "fashion_mnist": DatasetInfo(10, 1, 28, (0.2860,), (0.3530,)),
    # CIFAR train split, per-pixel std (not the often-copied 0.2023/0.1994/0.2010).
    "cifar10": DatasetInfo(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": DatasetInfo(10, 3, 96, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagefolder": DatasetInfo(None, 3, None, _IMAGENET_MEAN, _IMAGENET_STD),
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
        return (sum(w * v for w, v in zip(LUMA, native)),)

    return adapt(mean, info.mean), adapt(std, info.std)


# --------------------------------------------------------------------------- datasets
class InMemoryDataset(Dataset):
    """A whole split in memory: ``images`` (N, C, H, W) uint8, ``labels`` (N,) int64."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 name: str = "", split: str = ""):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.num_classes = int(num_classes)
        self.name, self.split = name, split

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def subset(self, indices: torch.Tensor) -> "InMemoryDataset":
        return InMemoryDataset(self.images[indices], self.labels[indices], self.num_classes,
                               self.name, self.split)

    def __repr__(self) -> str:
        return (f"InMemoryDataset({self.name}/{self.split}: {len(self)} images "
                f"{tuple(self.images.shape[1:])}, {self.num_classes} classes)")


class ImageFolderDataset(Dataset):
    """``root/<split>/<class>/**/<image>``: decoded with PIL and resized to a fixed square.

    Each image is converted to RGB (grayscale, palette and RGBA included; the alpha channel
    is dropped, as torchvision's loader does) or to L when ``channels=1``; the shorter side is
    resized to ``load_size`` (bilinear, antialiased) and the centre ``load_size`` square kept.
    An undecodable file raises DataError naming it; with ``skip_corrupt`` the next decodable
    image (in index order) is returned instead and the file is remembered in ``skipped``.
    """

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], load_size: int,
                 channels: int = 3, skip_corrupt: bool = False, split: str = ""):
        self.samples = samples
        self.classes = classes
        self.num_classes = len(classes)
        self.load_size = int(load_size)
        self.channels = channels
        self.skip_corrupt = skip_corrupt
        self.name, self.split = "imagefolder", split
        self.skipped: set[str] = set()
        self.labels = torch.tensor([lab for _, lab in samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def decode(self, path: str) -> torch.Tensor:
        """Decode ``path`` to uint8 (C, load_size, load_size); raises on a bad file."""
        from PIL import Image

        size = self.load_size
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("L" if self.channels == 1 else "RGB", (size, size))  # fast JPEG downscale
            im = im.convert("L" if self.channels == 1 else "RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    def load(self, i: int) -> tuple[torch.Tensor, int, list[str]]:
        """``(image, label, skipped paths)``; raises DataError on a bad file unless skipping."""
        skipped: list[str] = []
        n = len(self.samples)
        for j in range(n):
            path, label = self.samples[(i + j) % n]
            try:
                return self.decode(path), label, skipped
            except Exception as e:  # any decoder failure (OSError, SyntaxError, bomb, ...)
                if not self.skip_corrupt:
                    raise DataError(
                        f"imagefolder: cannot decode image '{path}' ({type(e).__name__}: "
                        f"{e}); delete or replace it, or set data.skip_corrupt=true to skip "
                        f"undecodable images") from None
                skipped.append(path)
        raise DataError(f"imagefolder: none of the {n} images of split '{self.split}' could be "
                        f"decoded (e.g. '{skipped[0]}')")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label, skipped = self.load(i)
        self.skipped.update(skipped)
        return image, label

    def subset(self, indices: torch.Tensor) -> "ImageFolderDataset":
        return ImageFolderDataset([self.samples[int(i)] for i in indices], self.classes,
                                  self.load_size, self.channels, self.skip_corrupt, self.split)

    def __repr__(self) -> str:
        return (f"ImageFolderDataset({self.split}: {len(self)} images, {self.num_classes} "
                f"classes, load_size={self.load_size})")


# --------------------------------------------------------------------------- file formats
def _open_maybe_gz(path: str):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx(path: str) -> torch.Tensor:
    """Read an idx file (MNIST format), gzip-compressed or not, holding unsigned bytes.

    Layout: two zero bytes, type code 0x08 (uint8), the number of dimensions n, n big-endian
    int32 sizes, then the data in C order.
    """
    try:
        with _open_maybe_gz(path) as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read idx file '{path}' ({e}); delete it and get the data again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        raise DataError(f"'{path}' is not an idx file of unsigned bytes (bad header); "
                        f"delete it and get the data again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"idx file '{path}' is truncated; delete it and get the data again")
    dims = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    if len(raw) - header != math.prod(dims):
        raise DataError(f"idx file '{path}' holds {len(raw) - header} bytes of data, its header "
                        f"says {math.prod(dims)}; delete it and get the data again")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


def _to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
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


def _fmnist_hint(root: str) -> str:
    return (f"get it with --set data.download=true (online; saved under {root}/FashionMNIST/raw) "
            f"or `apt-get install dataset-fashion-mnist` (files in {DEBIAN_FASHION_MNIST})")


def _load_fashion_mnist(root: str, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split in ("train", "pretrain") else "t10k"
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    raw_dir = os.path.join(root, "FashionMNIST", "raw")

    def find(folder: str) -> Optional[list[str]]:
        found = []
        for n in names:
            hit = next((p for p in (os.path.join(folder, n), os.path.join(folder, n + ".gz"))
                        if os.path.isfile(p)), None)
            if hit is None:
                return None
            found.append(hit)
        return found

    paths = find(raw_dir)
    if paths is None and download:
        import torchvision

        def fetch() -> None:
            for train in (True, False):
                torchvision.datasets.FashionMNIST(root, train=train, download=True)

        _download("fashion_mnist", root, fetch, _fmnist_hint(root))
        paths = find(raw_dir)
    if paths is None:
        paths = find(DEBIAN_FASHION_MNIST)
    if paths is None:
        raise DataError(
            f"fashion_mnist: data not found; tried {raw_dir}/{names[0]}[.gz] and "
            f"{DEBIAN_FASHION_MNIST}/{names[0]}.gz; {_fmnist_hint(root)}")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"fashion_mnist: '{paths[0]}' and '{paths[1]}' do not match "
                        f"({tuple(images.shape)} images, {tuple(labels.shape)} labels)")
    if int(labels.max()) > 9:
        raise DataError(f"fashion_mnist: '{paths[1]}' holds labels above 9; not Fashion-MNIST")
    return images.unsqueeze(1), labels.to(torch.int64)


def _download(name: str, root: str, fn, hint: str) -> None:
    from sslkit.distributed import main_process_first

    try:
        with main_process_first():
            os.makedirs(root, exist_ok=True)
            fn()
    except Exception as e:  # network errors come in many types (URLError, OSError, ...)
        raise DataError(f"{name}: download into '{root}' failed ({type(e).__name__}: {e}); "
                        f"check the connection, or {hint}") from None


def _load_cifar(name: str, root: str, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    folder = os.path.join(root, cls.base_folder)
    hint = (f"get it with --set data.download=true (online), or put torchvision's "
            f"{cls.base_folder}/ folder (python pickles from {cls.url}) under data.root")
    train = split in ("train", "pretrain")
    if not os.path.isdir(folder) and not download:
        raise DataError(f"{name}: data not found; tried {folder}; {hint}")
    if download:
        _download(name, root, lambda: cls(root, train=train, download=True), hint)
    try:
        ds = cls(root, train=train, download=False)
    except RuntimeError as e:  # "Dataset not found or corrupted"
        raise DataError(f"{name}: files under {folder} are missing or corrupted ({e}); "
                        f"delete the folder and {hint}") from None
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
        raise DataError(f"{name}: cannot read {folder} ({type(e).__name__}: {e}); "
                        f"delete the folder and {hint}") from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(ds.targets, dtype=torch.int64)


STL10_SIDE = 96


def _stl10_count(path: str) -> int:
    per = 3 * STL10_SIDE * STL10_SIDE
    size = os.path.getsize(path)
    if size == 0 or size % per:
        raise DataError(f"stl10: '{path}' has {size} bytes, not a multiple of {per} "
                        f"(3x96x96); delete it and get the data again")
    return size // per


def _read_stl10_images(path: str, out: torch.Tensor, chunk: int = 8192) -> None:
    """Fill ``out`` (N, 3, 96, 96) uint8 from STL-10 ``*_X.bin`` (each channel column-major).

    Read in chunks, so the 2.7 GB unlabeled split needs no second full-size copy.
    """
    per = 3 * STL10_SIDE * STL10_SIDE
    with open(path, "rb") as fh:
        for s in range(0, out.shape[0], chunk):
            n = min(chunk, out.shape[0] - s)
            raw = np.frombuffer(fh.read(n * per), dtype=np.uint8).reshape(n, 3, STL10_SIDE, STL10_SIDE)
            out[s:s + n] = torch.from_numpy(raw.copy()).transpose(2, 3)  # (col, row) -> (row, col)


def _load_stl10(root: str, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder = os.path.join(root, "stl10_binary")
    parts = {"train": ["train"], "test": ["test"], "pretrain": ["train", "unlabeled"]}[split]
    needed = [os.path.join(folder, f"{p}_X.bin") for p in parts]
    needed += [os.path.join(folder, f"{p}_y.bin") for p in parts if p != "unlabeled"]
    hint = ("get it with --set data.download=true (online, 2.6 GB), or extract "
            "stl10_binary.tar.gz (train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
            "unlabeled_X.bin) under data.root")
    missing = [p for p in needed if not os.path.isfile(p)]
    if missing and download:
        import torchvision

        _download("stl10", root, lambda: torchvision.datasets.STL10(root, split="train",
                                                                   download=True), hint)
        missing = [p for p in needed if not os.path.isfile(p)]
    if missing:
        raise DataError(f"stl10: data not found; tried {', '.join(missing)}; {hint}")
    counts = [_stl10_count(os.path.join(folder, f"{p}_X.bin")) for p in parts]
    images = torch.empty((sum(counts), 3, STL10_SIDE, STL10_SIDE), dtype=torch.uint8)
    labels = torch.full((sum(counts),), -1, dtype=torch.int64)  # unlabeled: -1
    start = 0
    for p, n in zip(parts, counts):
        _read_stl10_images(os.path.join(folder, f"{p}_X.bin"), images[start:start + n])
        if p != "unlabeled":
            ypath = os.path.join(folder, f"{p}_y.bin")
            y = torch.from_numpy(np.fromfile(ypath, dtype=np.uint8).astype(np.int64)) - 1
            if y.shape[0] != n or int(y.min()) < 0 or int(y.max()) > 9:
                raise DataError(f"stl10: '{ypath}' does not match its images (labels must be "
                                f"1..10, one per image); delete the folder and {hint}")
            labels[start:start + n] = y
        start += n
    return images, labels


# --------------------------------------------------------------------------- synthetic
def synthetic_images(n: int, num_classes: int, size: int, seed: int,
                     proto_seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic images with class structure: ``(images (n,3,S,S) uint8, labels (n,))``.

    Class ``c`` fixes (from ``proto_seed``) a foreground colour, a grating orientation
    ``theta_c`` and frequency ``f_c`` and a shape (disc / square / diamond for ``c mod 3``).
    Each image draws (from ``seed``) the shape's centre and radius, the grating phase, a
    colour jitter, a gray background level and pixel noise:
    ``x = m * colour * (0.4 + 0.6 g) + (1 - m) * bg + N(0, 0.06^2)`` with
    ``g = (1 + sin(2 pi f_c (u cos theta_c + v sin theta_c) + phase)) / 2`` and ``m`` the
    shape's mask. Labels are balanced (``i mod C``, shuffled). Raw-pixel kNN is well above
    chance but far from perfect (about 65 % cosine k=20 at 10 classes, 32 px).
    """
    pg = torch.Generator().manual_seed(proto_seed)
    colour = torch.rand(num_classes, 3, generator=pg) * 0.7 + 0.15
    angle = (torch.arange(num_classes) + 0.5 * torch.rand(num_classes, generator=pg)) * math.pi / num_classes
    freq = 2 + 3 * torch.rand(num_classes, generator=pg)
    shape = torch.arange(num_classes) % 3

    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    u = ((torch.arange(size) + 0.5) / size).view(1, 1, size)
    v = u.view(1, size, 1)
    for s in range(0, n, 1024):  # chunked to bound memory at large sizes
        y = labels[s:s + 1024]
        b = y.shape[0]
        cx = 0.3 + 0.4 * torch.rand(b, 1, 1, generator=g)
        cy = 0.3 + 0.4 * torch.rand(b, 1, 1, generator=g)
        r = 0.18 + 0.14 * torch.rand(b, 1, 1, generator=g)
        phase = 2 * math.pi * torch.rand(b, 1, 1, generator=g)
        th, f = angle[y].view(b, 1, 1), freq[y].view(b, 1, 1)
        grating = 0.5 + 0.5 * torch.sin(2 * math.pi * f * (u * torch.cos(th) + v * torch.sin(th)) + phase)
        du, dv = (u - cx).abs(), (v - cy).abs()
        sh = shape[y].view(b, 1, 1)
        mask = torch.where(sh == 0, du ** 2 + dv ** 2 < r ** 2,
                           torch.where(sh == 1, torch.maximum(du, dv) < 0.85 * r, du + dv < 1.2 * r))
        mask = mask.unsqueeze(1).float()
        col = (colour[y] + 0.15 * (torch.rand(b, 3, generator=g) - 0.5)).view(b, 3, 1, 1)
        bg = (0.2 + 0.6 * torch.rand(b, 1, 1, 1, generator=g)
              + 0.1 * (torch.rand(b, 3, 1, 1, generator=g) - 0.5))
        x = mask * col * (0.4 + 0.6 * grating.unsqueeze(1)) + (1 - mask) * bg
        x = x + 0.06 * torch.randn(b, 3, size, size, generator=g)
        images[s:s + b] = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels


# --------------------------------------------------------------------------- imagefolder
def _is_plain_name(entry: str) -> bool:
    return (entry not in ("", ".", "..") and "/" not in entry and "\\" not in entry
            and "\x00" not in entry and not os.path.isabs(entry) and ":" not in entry)


def _read_class_list(path: str, root: str) -> list[str]:
    candidates = [path] if os.path.isabs(path) else [path, os.path.join(root, path)]
    found = next((p for p in candidates if os.path.isfile(p)), None)
    if found is None:
        raise DataError(f"imagefolder: class list file not found; tried {', '.join(candidates)}; "
                        f"give a text file with one class folder name per line")
    try:
        with open(found, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"imagefolder: cannot read class list '{found}' ({e})") from None
    classes: list[str] = []
    for k, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if not _is_plain_name(entry):
            raise DataError(f"imagefolder: class list '{found}' line {k}: '{entry}' is not a "
                            f"plain class folder name inside {root} (no paths, '..' or "
                            f"absolute names)")
        if entry not in classes:
            classes.append(entry)
    if not classes:
        raise DataError(f"imagefolder: class list '{found}' names no classes")
    return classes


def _imagefolder_layout_hint(root: str) -> str:
    return (f"expected the layout {root}/train/<class>/<image>.jpg and "
            f"{root}/val/<class>/<image>.jpg")


def _list_imagefolder(root: str, split: str,
                      class_list: Optional[str]) -> tuple[list[tuple[str, int]], list[str]]:
    sub = "val" if split == "test" else "train"
    folder = os.path.join(root, sub)
    if not os.path.isdir(folder):
        raise DataError(f"imagefolder: folder {folder} not found; {_imagefolder_layout_hint(root)}")
    train_dir = os.path.join(root, "train")
    class_dir = train_dir if os.path.isdir(train_dir) else folder  # indices follow train/
    if class_list:
        classes = _read_class_list(class_list, root)
        for c in classes:
            if not os.path.isdir(os.path.join(class_dir, c)):
                raise DataError(f"imagefolder: class '{c}' of the class list has no folder "
                                f"{os.path.join(class_dir, c)}; {_imagefolder_layout_hint(root)}")
    else:
        classes = sorted(e.name for e in os.scandir(class_dir) if e.is_dir())
    if not classes:
        raise DataError(f"imagefolder: no class folders in {class_dir}; {_imagefolder_layout_hint(root)}")
    samples: list[tuple[str, int]] = []
    for idx, c in enumerate(classes):
        cdir = os.path.join(folder, c)
        if not os.path.isdir(cdir):
            continue  # a class absent from val/ simply has no test images
        for dirpath, dirnames, filenames in os.walk(cdir, followlinks=True):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, fn), idx))
    if not samples:
        raise DataError(f"imagefolder: no images ({', '.join(IMG_EXTENSIONS)}) found in "
                        f"{folder}; {_imagefolder_layout_hint(root)}")
    return samples, classes


# --------------------------------------------------------------------------- subset
def stratified_subset(labels: torch.Tensor, subset: Union[int, float], seed: int = 0) -> torch.Tensor:
    """Sorted indices of a seeded subset that keeps each label's share.

    ``subset`` is a count (int >= 1) or a fraction in (0, 1]. Each label ``y`` with ``n_y``
    images gets ``floor(n * n_y / N)`` images plus one for the labels with the largest
    remainders until ``n`` are chosen (ties broken by the seed); which images is a seeded
    random choice within the label.
    """
    labels = torch.as_tensor(labels)
    total = labels.shape[0]
    if isinstance(subset, bool) or not isinstance(subset, (int, float)) or subset <= 0:
        raise ConfigError(f"data.subset={subset!r} is invalid: give a count (int) or a fraction in (0, 1]")
    if isinstance(subset, float):
        if subset > 1:
            raise ConfigError(f"data.subset={subset} is invalid: a fraction must be in (0, 1]")
        n = max(1, round(subset * total))
    else:
        n = int(subset)
    if n > total:
        raise DataError(f"data.subset={subset} asks for {n} images but the split has only {total}; "
                        f"use a smaller count or a fraction")
    g = torch.Generator().manual_seed(int(seed))
    values, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n / total
    quota = exact.floor().long()
    left = n - int(quota.sum())
    if left:
        frac = exact - quota.double()
        tiebreak = torch.rand(len(values), generator=g, dtype=torch.float64) * 1e-9
        quota[torch.argsort(frac + tiebreak, descending=True)[:left]] += 1
    chosen = []
    for v, q in zip(values.tolist(), quota.tolist()):
        idx = torch.nonzero(labels == v).flatten()
        chosen.append(idx[torch.randperm(idx.numel(), generator=g)[:q]])
    return torch.sort(torch.cat(chosen)).values


# --------------------------------------------------------------------------- builders
def build_dataset(name: str, root: str, split: str, *, channels: int = 3, download: bool = False,
                  load_size: Optional[int] = None, image_size: Optional[int] = None,
                  class_list: Optional[str] = None, skip_corrupt: bool = False,
                  subset: Union[int, float, None] = None, seed: int = 0,
                  synthetic_classes: int = 10, synthetic_train: int = 2000,
                  synthetic_test: int = 500) -> Dataset:
    """Build split ``split`` ("pretrain" | "train" | "test") of dataset ``name``.

    Returns a Dataset of ``(uint8 (C, H, W), int label)`` with ``num_classes``; the in-memory
    datasets also expose ``images`` (N, C, H, W) and ``labels`` (N,). "pretrain" is what SSL
    pretraining reads: the train split, and for STL-10 train + unlabeled (label -1).
    ``imagefolder`` reads ``root/train`` ("pretrain", "train") or ``root/val`` ("test") at a
    square side ``load_size`` (default ``round(image_size * 256 / 224)``).
    ``synthetic`` makes ``synthetic_train`` / ``synthetic_test`` images of side
    ``image_size`` (default 32). ``subset`` keeps a stratified seeded part (count or
    fraction) of the split.
    """
    dataset_info(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
    if channels not in (1, 3):
        raise ConfigError(f"data.channels={channels} is invalid: use 1 or 3")
    root = os.path.expanduser(str(root))
    ds: Dataset
    if name == "imagefolder":
        if load_size is None:
            load_size = round((image_size or 224) * 256 / 224)
        samples, classes = _list_imagefolder(root, split, class_list)
        ds = ImageFolderDataset(samples, classes, load_size, channels, skip_corrupt, split)
    else:
        if name == "fashion_mnist":
            images, labels = _load_fashion_mnist(root, split, download)
        elif name in ("cifar10", "cifar100"):
            images, labels = _load_cifar(name, root, split, download)
        elif name == "stl10":
            images, labels = _load_stl10(root, split, download)
        else:  # synthetic: fixed seeds per split, independent of the run seed
            n = synthetic_test if split == "test" else synthetic_train
            images, labels = synthetic_images(n, synthetic_classes, image_size or 32,
                                              seed=2 if split == "test" else 1)
        num_classes = synthetic_classes if name == "synthetic" else dataset_info(name).num_classes
        ds = InMemoryDataset(_to_channels(images, channels), labels, num_classes, name, split)
    if subset is not None:
        ds = ds.subset(stratified_subset(ds.labels, subset, seed))
    return ds


def dataset_from_config(data_cfg: Any, split: str, seed: int = 0) -> Dataset:
    """:func:`build_dataset` from a :class:`sslkit.config.DataConfig`.

    ``data.subset`` applies to the training splits ("pretrain", "train"); "test" stays whole.
    """
    return build_dataset(
        data_cfg.name, data_cfg.root, split, channels=data_cfg.channels,
        download=data_cfg.download, load_size=data_cfg.load_size,
        image_size=data_cfg.image_size, class_list=data_cfg.class_list,
        skip_corrupt=data_cfg.skip_corrupt,
        subset=data_cfg.subset if split != "test" else None, seed=seed,
        synthetic_classes=data_cfg.synthetic_classes,
        synthetic_train=data_cfg.synthetic_train, synthetic_test=data_cfg.synthetic_test)


# --------------------------------------------------------------------------- sampling
def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Mix (seed, epoch) so that (0, 1) and (1, 0) differ (DistributedSampler's seed+epoch
    # collides).
    return torch.Generator().manual_seed((int(seed) * 0x9E3779B97F4A7C15 + int(epoch)) % (2 ** 63))


class TrainSampler(Sampler[int]):
    """Seeded, resumable, DDP-aware shuffling sampler.

    Epoch ``e`` uses the permutation ``P = randperm(N)`` from a generator seeded by
    ``(seed, e)`` alone. With ``world_size`` W, each rank gets ``M = floor(N / W)``
    (``drop_last``) or ``ceil(N / W)`` (the permutation then wraps around to pad) indices:
    rank r takes ``P[r], P[r + W], ...`` (as DistributedSampler), so ranks are disjoint
    (``drop_last``) and together cover the permutation. :meth:`set_start` skips the first
    ``batch_index * batch_size`` indices of this rank's shard for the current epoch: exact
    mid-epoch resume. :meth:`set_epoch` selects the epoch and resets the start to 0.
    """

    def __init__(self, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True):
        if num_samples < 1:
            raise DataError("the training split is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if drop_last and num_samples < world_size:
            raise DataError(f"the training split has {num_samples} images, fewer than the "
                            f"{world_size} processes")
        self.num_samples, self.seed, self.rank, self.world_size = num_samples, seed, rank, world_size
        self.drop_last = drop_last
        self.per_rank = num_samples // world_size if drop_last else -(-num_samples // world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, batch_index: int, batch_size: int) -> None:
        start = int(batch_index) * int(batch_size)
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start {start} outside this rank's {self.per_rank} samples")
        self.start = start

    def indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch, after the start offset."""
        perm = torch.randperm(self.num_samples, generator=_epoch_generator(self.seed, self.epoch))
        total = self.per_rank * self.world_size
        if total > self.num_samples:
            perm = perm.repeat(-(-total // self.num_samples))
        return perm[:total][self.rank::self.world_size][self.start:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start


# --------------------------------------------------------------------------- loading
class TensorBatchLoader:
    """Batches of an in-memory dataset by tensor indexing, in the calling process.

    Yields ``(images (B, C, H, W) uint8, labels (B,) int64)``; training order comes from the
    sampler (or a seeded generator that advances every pass); evaluation order is the index
    order, without dropping the last partial batch.
    """

    def __init__(self, dataset: InMemoryDataset, batch_size: int, *, train: bool,
                 sampler: Optional[Sampler] = None, pin_memory: bool = False, seed: int = 0):
        self.dataset, self.batch_size, self.train, self.sampler = dataset, int(batch_size), train, sampler
        self.drop_last = train
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.generator = torch.Generator().manual_seed(int(seed))

    def _order(self) -> torch.Tensor:
        if self.sampler is not None:
            idx = self.sampler.indices() if hasattr(self.sampler, "indices") else list(self.sampler)
            return torch.as_tensor(idx, dtype=torch.int64)
        n = len(self.dataset)
        return torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        images, labels = self.dataset.images, self.dataset.labels
        for b in range(len(self)):
            sel = order[b * self.batch_size:(b + 1) * self.batch_size]
            x, y = images[sel], labels[sel]
            if self.pin_memory:
                x, y = x.pin_memory(), y.pin_memory()
            yield x, y


class _Guarded(Dataset):
    """Wraps a dataset so that a failing item comes back as data, never as a worker crash.

    Item: ``(image or None, label, error message or "", skipped file paths)``.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            if isinstance(self.dataset, ImageFolderDataset):
                image, label, skipped = self.dataset.load(i)
                return image, label, "", skipped
            image, label = self.dataset[i]
            return image, int(label), "", []
        except DataError as e:
            return None, -1, str(e), []
        except Exception as e:  # a bug or an unexpected file problem: still report it cleanly
            return None, -1, f"data: loading item {i} failed ({type(e).__name__}: {e})", []


def _guarded_collate(batch):
    skipped = [p for item in batch for p in item[3]]
    errors = [item[2] for item in batch if item[2]]
    if errors:
        return None, None, errors[0], skipped
    images = torch.stack([item[0] for item in batch])
    labels = torch.tensor([item[1] for item in batch], dtype=torch.int64)
    return images, labels, "", skipped


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2 ** 32  # torch seeds each worker from the loader generator
    np.random.seed(seed)
    random.seed(seed)


class WorkerLoader:
    """A DataLoader over a decoded-on-the-fly dataset whose bad files surface as DataError.

    Undecodable files skipped under ``skip_corrupt`` are collected in ``skipped`` and their
    count is logged (warning) at the end of each pass that met new ones.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, train: bool,
                 sampler: Optional[Sampler] = None, num_workers: int = 2,
                 pin_memory: bool = False, seed: int = 0):
        self.dataset, self.sampler, self.batch_size = dataset, sampler, int(batch_size)
        self.skipped: set[str] = set()
        generator = torch.Generator().manual_seed(int(seed))
        self.loader = DataLoader(
            _Guarded(dataset), batch_size=self.batch_size,
            shuffle=(train and sampler is None), sampler=sampler, drop_last=train,
            num_workers=num_workers, pin_memory=pin_memory and torch.cuda.is_available(),
            persistent_workers=num_workers > 0, worker_init_fn=_seed_worker,
            generator=generator, collate_fn=_guarded_collate,
            prefetch_factor=4 if num_workers > 0 else None)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        before = len(self.skipped)
        for images, labels, error, skipped in self.loader:
            self.skipped.update(skipped)
            if error:
                raise DataError(error)
            yield images, labels
        new = len(self.skipped) - before
        if new:
            log.warning("skipped %d undecodable image(s) (data.skip_corrupt=true), %d in all; "
                        "e.g. %s", new, len(self.skipped), sorted(self.skipped)[0])


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, sampler: Optional[Sampler] = None,
                 num_workers: int = 2, pin_memory: bool = False, seed: int = 0):
    """An iterable of ``(images uint8 (B, C, H, W), labels int64 (B,))`` with ``len()``.

    In-memory datasets (with ``images``/``labels``) are batched in-process by indexing
    (no workers: faster for small images). Others use a DataLoader (``num_workers`` seeded
    workers, persistent, ``pin_memory`` when asked and CUDA is present). Training loaders
    shuffle (via ``sampler`` if given) and drop the last partial batch; evaluation loaders
    keep the index order and every image. Both expose ``set_epoch(epoch)``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} is invalid: must be >= 1")
    if isinstance(getattr(dataset, "images", None), torch.Tensor) and \
            isinstance(getattr(dataset, "labels", None), torch.Tensor):
        return TensorBatchLoader(dataset, batch_size, train=train, sampler=sampler,
                                 pin_memory=pin_memory, seed=seed)
    return WorkerLoader(dataset, batch_size, train=train, sampler=sampler,
                        num_workers=num_workers, pin_memory=pin_memory, seed=seed)
