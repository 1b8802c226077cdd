"""The built-in datasets (each loader registered with its facts, :mod:`sslkit.data.info`),
:func:`build_dataset` and :func:`dataset_from_config`, plus the in-memory dataset, the
seeded subset and the long-tailed profile.

A loader takes a :class:`Request` and returns the whole split as a Dataset of
``(uint8 (C, H, W), int label)`` with ``num_classes`` and ``labels`` (N,) int64;
:func:`build_dataset` then applies ``long_tail`` and ``subset``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch.utils.data import Dataset

from sslkit.data.readers import (FASHION_MNIST_CLASSES, load_cifar, load_fashion_mnist,
                                 load_stl10, stl10_classes)
from sslkit.data.encoded import EncodedImages
from sslkit.data.imagefolder import ImageFolderDataset, list_imagefolder
from sslkit.data.info import (IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, register_dataset,
                              resize_side, source, to_channels)
from sslkit.data.synthetic import synthetic_images
from sslkit.errors import ConfigError, DataError

SPLITS = ("pretrain", "train", "test")


class InMemoryDataset(Dataset):
    """A whole split in memory: ``images`` (N, C, H, W) uint8, ``labels`` (N,) int64."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 name: str = "", split: str = "", classes: Optional[list[str]] = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.num_classes = int(num_classes)
        self.name, self.split = name, split
        self.classes = classes if classes is not None else [str(c) for c in range(num_classes)]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def subset(self, indices: torch.Tensor) -> "InMemoryDataset":
        return InMemoryDataset(self.images[indices], self.labels[indices], self.num_classes,
                               self.name, self.split, self.classes)

    def __repr__(self) -> str:
        return (f"InMemoryDataset({self.name}/{self.split}: {len(self)} images "
                f"{tuple(self.images.shape[1:])}, {self.num_classes} classes)")


@dataclass(frozen=True)
class Request:
    """What a loader is asked for: one split of one dataset, read as ``channels`` channels."""

    name: str
    root: str
    split: str
    channels: int = 3
    download: bool = False
    load_size: Optional[int] = None
    image_size: Optional[int] = None
    class_list: Optional[str] = None
    skip_corrupt: bool = False
    val_root: Optional[str] = None
    image_column: str = "image"
    label_column: str = "label"
    synthetic_classes: int = 10
    synthetic_train: int = 2000
    synthetic_test: int = 500


def _in_memory(req: Request, images: torch.Tensor, labels: torch.Tensor,
               classes: list[str]) -> InMemoryDataset:
    return InMemoryDataset(to_channels(images, req.channels), labels, len(classes), req.name,
                           req.split, classes)


# Fashion-MNIST train split statistics.
@register_dataset("fashion_mnist", DatasetInfo(10, 1, 28, (0.2860,), (0.3530,)))
def _fashion_mnist(req: Request) -> Dataset:
    return _in_memory(req, *load_fashion_mnist(req.root, req.split, req.download),
                      FASHION_MNIST_CLASSES)


# CIFAR train split, per-pixel std (not the often-copied 0.2023/0.1994/0.2010).
@register_dataset("cifar100", DatasetInfo(100, 3, 32, (0.5071, 0.4865, 0.4409),
                                          (0.2673, 0.2564, 0.2762)))
@register_dataset("cifar10", DatasetInfo(10, 3, 32, (0.4914, 0.4822, 0.4465),
                                         (0.2470, 0.2435, 0.2616)))
def _cifar(req: Request) -> Dataset:
    return _in_memory(req, *load_cifar(req.name, req.root, req.split, req.download))


@register_dataset("stl10", DatasetInfo(10, 3, 96, (0.4467, 0.4398, 0.4066),
                                       (0.2603, 0.2566, 0.2713)))
def _stl10(req: Request) -> Dataset:
    return _in_memory(req, *load_stl10(req.root, req.split, req.download),
                      stl10_classes(req.root))


# Statistics measured on the generated train split (2000 images, 32 px).
@register_dataset("synthetic", DatasetInfo(10, 3, None, (0.465, 0.478, 0.473),
                                           (0.199, 0.190, 0.189)))
def _synthetic(req: Request) -> Dataset:
    # fixed seeds per split, independent of the run seed
    n = req.synthetic_test if req.split == "test" else req.synthetic_train
    images, labels = synthetic_images(n, req.synthetic_classes, req.image_size or 32,
                                      seed=2 if req.split == "test" else 1)
    return _in_memory(req, images, labels, [f"class {c}" for c in range(req.synthetic_classes)])


@register_dataset("imagefolder", DatasetInfo(None, 3, None, IMAGENET_MEAN, IMAGENET_STD,
                                             yields="files"))
def _imagefolder(req: Request) -> Dataset:
    load_size = req.load_size if req.load_size is not None else resize_side(req.image_size or 224)
    samples, classes = list_imagefolder(req.root, req.split, req.class_list)
    return ImageFolderDataset(samples, classes, load_size, req.channels, req.skip_corrupt,
                              req.split)


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


def long_tail_counts(counts: list[int], ratio: float) -> list[int]:
    """Images kept per class of a long-tailed split (Cao et al. 2019, LDAM-DRW's CIFAR-LT;
    Cui et al. 2019): class i of C keeps ``floor(n_max * (1/r)^(i/(C-1)))``, at most its own
    count and at least 1, with ``n_max`` the largest class."""
    n_max, c = max(counts), len(counts)
    keep = [int(n_max * (1.0 / ratio) ** (i / (c - 1.0))) if c > 1 else n_max
            for i in range(c)]
    return [max(1, min(k, n)) for k, n in zip(keep, counts)]


def long_tail_indices(labels: torch.Tensor, ratio: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices of the long-tailed version of a labelled split (the profile of
    :func:`long_tail_counts` over the sorted class order, a seeded choice of the images
    within each class); unlabelled images (label -1) are all kept."""
    labels = torch.as_tensor(labels)
    classes = sorted(c for c in torch.unique(labels).tolist() if c >= 0)
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    keep = long_tail_counts([int(m.numel()) for m in members], float(ratio))
    g = torch.Generator().manual_seed(int(seed))
    chosen = [m[torch.randperm(m.numel(), generator=g)[:k]] for m, k in zip(members, keep)]
    chosen.append(torch.nonzero(labels < 0).flatten())
    return torch.sort(torch.cat(chosen)).values


def build_dataset(name: str, root: str, split: str, *, channels: int = 3, download: bool = False,
                  load_size: Optional[int] = None, image_size: Optional[int] = None,
                  class_list: Optional[str] = None, skip_corrupt: bool = False,
                  subset: Union[int, float, None] = None, seed: int = 0,
                  synthetic_classes: int = 10, synthetic_train: int = 2000,
                  synthetic_test: int = 500, long_tail: Optional[float] = None,
                  val_root: Optional[str] = None, image_column: str = "image",
                  label_column: str = "label") -> Dataset:
    """Build split ``split`` ("pretrain" | "train" | "test") of dataset ``name``.

    Returns a Dataset of ``(uint8 (C, H, W), int label)`` with ``num_classes``; the in-memory
    datasets also expose ``images`` (N, C, H, W) and ``labels`` (N,). "pretrain" is what SSL
    pretraining reads: the train split, and for STL-10 train + unlabeled (label -1).
    ``imagefolder`` reads ``root/train`` ("pretrain", "train") or ``root/val`` ("test") at a
    square side ``load_size`` (default ``round(image_size * 256 / 224)``).
    ``webdataset`` and ``parquet`` read the shards or files of ``root`` ("pretrain",
    "train") or ``val_root`` ("test"; :mod:`sslkit.data.tar_shards`,
    :mod:`sslkit.data.parquet_files`). ``synthetic`` makes ``synthetic_train`` /
    ``synthetic_test`` images of side
    ``image_size`` (default 32). ``long_tail`` (an imbalance ratio r >= 1) keeps the
    long-tailed profile of :func:`long_tail_indices`; then ``subset`` keeps a stratified
    seeded part (count or fraction) of the split.
    """
    src = source(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
    if channels not in (1, 3):
        raise ConfigError(f"data.channels={channels} is invalid: use 1 or 3")
    req = Request(name, os.path.expanduser(str(root)), split, channels, download, load_size,
                  image_size, class_list, skip_corrupt,
                  os.path.expanduser(val_root) if val_root else None, image_column,
                  label_column, synthetic_classes, synthetic_train, synthetic_test)
    ds = src.load(req)
    if src.info.files and not isinstance(ds, EncodedImages):
        raise TypeError(f"the loader of '{name}' is registered with yields='files' and must "
                        f"return an sslkit.data.encoded.EncodedImages, not {type(ds).__name__}")
    if long_tail is not None:
        if float(long_tail) < 1:
            raise ConfigError(f"data.long_tail={long_tail} is invalid: an imbalance ratio is "
                              f">= 1 (1 = balanced)")
        ds = ds.subset(long_tail_indices(ds.labels, long_tail, seed))
    if subset is not None:
        ds = ds.subset(stratified_subset(ds.labels, subset, seed))
    return ds


def dataset_from_config(data_cfg: Any, split: str, seed: int = 0) -> Dataset:
    """:func:`build_dataset` from a :class:`sslkit.config.DataConfig`.

    ``data.long_tail`` and ``data.subset`` apply to the training splits ("pretrain",
    "train", the same images for both); "test" stays whole and balanced.
    """
    return build_dataset(
        data_cfg.name, data_cfg.root, split, channels=data_cfg.channels,
        download=data_cfg.download, load_size=data_cfg.load_size,
        image_size=data_cfg.image_size, class_list=data_cfg.class_list,
        skip_corrupt=data_cfg.skip_corrupt,
        subset=data_cfg.subset if split != "test" else None, seed=seed,
        long_tail=data_cfg.long_tail if split != "test" else None,
        synthetic_classes=data_cfg.synthetic_classes,
        synthetic_train=data_cfg.synthetic_train, synthetic_test=data_cfg.synthetic_test,
        val_root=data_cfg.val_root, image_column=data_cfg.image_column,
        label_column=data_cfg.label_column)
