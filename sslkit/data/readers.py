"""Readers of the datasets' own file formats: Fashion-MNIST's idx files, CIFAR's python
pickles (through torchvision), STL-10's binary files; optional downloads through torchvision.

Each ``load_*`` returns ``(images (N, C, H, W) uint8, labels (N,) int64)`` in the native
channels; a missing or unreadable file is a :class:`~sslkit.errors.DataError` naming the
paths tried and how to get the data.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
from typing import Optional

import numpy as np
import torch
import torchvision

from sslkit.distributed import main_process_first
from sslkit.errors import DataError

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


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


def _fmnist_hint(root: str) -> str:
    return (f"put the four idx files in {root}/FashionMNIST/raw, or `apt-get install "
            f"dataset-fashion-mnist` (files in {DEBIAN_FASHION_MNIST}), or let torchvision "
            f"download them with --set data.download=true (online)")


def load_fashion_mnist(root: str, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST from, in this order: local idx files under ``root/FashionMNIST/raw``
    (torchvision's layout, gzipped or not), the Debian package ``dataset-fashion-mnist``, or
    a torchvision download into ``root`` when ``download`` (the demo configs set it)."""
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

    paths = find(raw_dir) or find(DEBIAN_FASHION_MNIST)
    tried = f"tried {raw_dir}/{names[0]}[.gz] and {DEBIAN_FASHION_MNIST}/{names[0]}.gz"
    if paths is None and download:
        def fetch() -> None:
            for train in (True, False):
                torchvision.datasets.FashionMNIST(root, train=train, download=True)

        _download("fashion_mnist", root, fetch, f"{tried}; {_fmnist_hint(root)}")
        paths = find(raw_dir)
    if paths is None:
        raise DataError(f"fashion_mnist: data not found; {tried}; {_fmnist_hint(root)}")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"fashion_mnist: '{paths[0]}' and '{paths[1]}' do not match "
                        f"({tuple(images.shape)} images, {tuple(labels.shape)} labels)")
    if int(labels.max()) > 9:
        raise DataError(f"fashion_mnist: '{paths[1]}' holds labels above 9; not Fashion-MNIST")
    return images.unsqueeze(1), labels.to(torch.int64)


def _download(name: str, root: str, fn, hint: str) -> None:
    try:
        with main_process_first():
            os.makedirs(root, exist_ok=True)
            fn()
    except Exception as e:  # network errors come in many types (URLError, OSError, ...)
        raise DataError(f"{name}: download into '{root}' failed ({type(e).__name__}: {e}); "
                        f"{hint}") from None


def load_cifar(name: str, root: str, split: str, download: bool
               ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    folder = os.path.join(root, cls.base_folder)
    hint = (f"get it with --set data.download=true (online), or put torchvision's "
            f"{cls.base_folder}/ folder (python pickles from {cls.url}) under data.root")
    train = split in ("train", "pretrain")
    if not os.path.isdir(folder) and not download:
        raise DataError(f"{name}: data not found; tried {folder}; {hint}")
    if download:
        _download(name, root, lambda: cls(root, train=train, download=True),
                  f"check the connection, or {hint}")
    try:
        ds = cls(root, train=train, download=False)
    except RuntimeError as e:  # "Dataset not found or corrupted"
        raise DataError(f"{name}: files under {folder} are missing or corrupted ({e}); "
                        f"delete the folder and {hint}") from None
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
        raise DataError(f"{name}: cannot read {folder} ({type(e).__name__}: {e}); "
                        f"delete the folder and {hint}") from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes)


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


def load_stl10(root: str, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder = os.path.join(root, "stl10_binary")
    parts = {"train": ["train"], "test": ["test"], "pretrain": ["train", "unlabeled"]}[split]
    needed = [os.path.join(folder, f"{p}_X.bin") for p in parts]
    needed += [os.path.join(folder, f"{p}_y.bin") for p in parts if p != "unlabeled"]
    hint = ("get it with --set data.download=true (online, 2.6 GB), or extract "
            "stl10_binary.tar.gz (train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
            "unlabeled_X.bin) under data.root")
    missing = [p for p in needed if not os.path.isfile(p)]
    if missing and download:
        _download("stl10", root, lambda: torchvision.datasets.STL10(root, split="train",
                                                                   download=True),
                  f"check the connection, or {hint}")
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


STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship",
                 "truck"]


def stl10_classes(root: str) -> list[str]:
    """STL-10's class names (``class_names.txt`` of the archive, else its published list)."""
    path = os.path.join(root, "stl10_binary", "class_names.txt")
    try:
        with open(path, encoding="utf-8") as fh:
            names = [ln.strip() for ln in fh if ln.strip()]
        return names if len(names) == 10 else STL10_CLASSES
    except OSError:
        return STL10_CLASSES


FASHION_MNIST_CLASSES = list(torchvision.datasets.FashionMNIST.classes)
