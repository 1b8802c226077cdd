"""Datasets and loaders: fixed-size ``uint8`` CHW images + integer labels.

Every dataset returned by :func:`build_dataset` yields ``(image, label)`` with ``image`` a
``uint8`` tensor ``(C, H, W)`` of one fixed size per dataset and ``label`` an ``int``
(``-1`` for STL-10's unlabeled images). All randomness of the views happens later, batched
on the training device (:mod:`sslkit.augment`); the CPU only decodes.

* ``fashion_mnist``, ``cifar10``, ``cifar100``, ``stl10`` and ``synthetic`` are held in memory
  as one tensor per split (``.images`` ``(N, C, H, W)`` uint8, ``.labels`` ``(N,)`` int64), so
  :func:`build_loader` indexes whole batches in-process, without worker processes.
* ``imagefolder`` decodes each file in DataLoader workers (:mod:`sslkit.data.imagefolder`).

Channels: ``channels=3`` repeats grayscale data (Fashion-MNIST) to three channels;
``channels=1`` converts RGB data to luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601,
as PIL's ``convert("L")``), rounded to uint8.

Missing or unreadable data raises :class:`~sslkit.errors.DataError` with a one-line message
naming the dataset, the paths tried and how to get the data.

Modules: :mod:`~sslkit.data.info` (dataset facts, normalisation, channel rules),
:mod:`~sslkit.data.formats` (idx / CIFAR / STL-10 files), :mod:`~sslkit.data.synthetic`,
:mod:`~sslkit.data.imagefolder`, :mod:`~sslkit.data.datasets` (the name -> loader registry,
subsets) and :mod:`~sslkit.data.loaders` (samplers and batch loaders).
"""
from sslkit.data.datasets import (LOADERS, SPLITS, InMemoryDataset, Request, build_dataset,
                                  dataset_from_config, stratified_subset)
from sslkit.data.formats import DEBIAN_FASHION_MNIST, read_idx
from sslkit.data.imagefolder import IMG_EXTENSIONS, ImageFolderDataset
from sslkit.data.info import (IMAGENET_MEAN, IMAGENET_STD, LUMA, DatasetInfo, dataset_info,
                              normalization, resize_side, to_channels)
from sslkit.data.loaders import (TensorBatchLoader, TrainSampler, WorkerLoader, build_loader,
                                 tensor_pair)
from sslkit.data.synthetic import synthetic_images

__all__ = ["LOADERS", "SPLITS", "InMemoryDataset", "Request", "build_dataset",
           "dataset_from_config", "stratified_subset", "DEBIAN_FASHION_MNIST", "read_idx",
           "IMG_EXTENSIONS", "ImageFolderDataset", "IMAGENET_MEAN", "IMAGENET_STD", "LUMA",
           "DatasetInfo", "dataset_info", "normalization", "resize_side", "to_channels",
           "TensorBatchLoader", "TrainSampler", "WorkerLoader", "build_loader", "tensor_pair",
           "synthetic_images"]
