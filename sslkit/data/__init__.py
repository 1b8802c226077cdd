"""Datasets and loaders: fixed-size ``uint8`` CHW images + integer labels.

Every dataset returned by :func:`build_dataset` yields ``(image, label)`` with ``image`` a
``uint8`` tensor ``(C, H, W)`` of one fixed size per dataset and ``label`` an ``int``
(``-1`` for STL-10's unlabeled images). All randomness of the views happens later, batched
on the training device (:mod:`sslkit.augment`); the CPU only decodes.

* ``fashion_mnist``, ``cifar10``, ``cifar100``, ``stl10`` and ``synthetic`` are held in memory
  as one tensor per split (``.images`` ``(N, C, H, W)`` uint8, ``.labels`` ``(N,)`` int64), so
  :func:`build_loader` indexes whole batches in-process, without worker processes.
* ``imagefolder``, ``webdataset`` and ``parquet`` hold encoded images (an image folder's files,
  tar shards, Parquet / Arrow files: :class:`~sslkit.data.encoded.EncodedImages`), decoded in
  DataLoader workers (:mod:`sslkit.data.imagefolder`, :mod:`sslkit.data.tar_shards`,
  :mod:`sslkit.data.parquet_files`); ``python -m sslkit.data.shards`` writes shards.

Channels: ``channels=3`` repeats grayscale data (Fashion-MNIST) to three channels;
``channels=1`` converts RGB data to luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601,
as PIL's ``convert("L")``), rounded to uint8.

Missing or unreadable data raises :class:`~sslkit.errors.DataError` with a one-line message
naming the dataset, the paths tried and how to get the data.

Modules: :mod:`~sslkit.data.info` (the registry of the sources and their facts:
``@register_dataset``, normalisation, channel rules), :mod:`~sslkit.data.readers` (idx /
CIFAR / STL-10 files), :mod:`~sslkit.data.synthetic`, :mod:`~sslkit.data.imagefolder`,
:mod:`~sslkit.data.datasets` (the built-in sources, subsets), :mod:`~sslkit.data.crops`
(two random-resized crops of a whole decoded image) and :mod:`~sslkit.data.loaders`
(samplers and batch loaders), :mod:`~sslkit.data.fewlabels` (the labelled images of the
semi-supervised protocol: a class-balanced fraction, or SimCLR's subset files).
"""
from sslkit.data.datasets import (SPLITS, InMemoryDataset, Request, build_dataset,
                                  dataset_from_config, stratified_subset)
from sslkit.data.fewlabels import (label_fraction_indices, labelled_subset, read_subset_file,
                                   subset_file_indices)
from sslkit.data.readers import DEBIAN_FASHION_MNIST, read_idx
from sslkit.data.encoded import EncodedImages
from sslkit.data.imagefolder import IMG_EXTENSIONS, ImageFolderDataset
from sslkit.data.parquet_files import ParquetImages
from sslkit.data.tar_shards import TarShards
from sslkit.data.info import (IMAGENET_MEAN, IMAGENET_STD, LUMA, SOURCES, DatasetInfo,
                              dataset_info, normalization, register_dataset, resize_side,
                              source, to_channels)
from sslkit.data.loaders import (TensorBatchLoader, TrainSampler, WorkerLoader, build_loader,
                                 close_loader, tensor_pair)
from sslkit.data.synthetic import synthetic_images

__all__ = ["SOURCES", "SPLITS", "DEBIAN_FASHION_MNIST", "IMAGENET_MEAN", "IMAGENET_STD",
           "IMG_EXTENSIONS", "LUMA", "DatasetInfo", "EncodedImages", "ImageFolderDataset",
           "InMemoryDataset", "ParquetImages", "TarShards",
           "Request", "TensorBatchLoader", "TrainSampler", "WorkerLoader", "build_dataset",
           "build_loader", "close_loader", "dataset_from_config", "dataset_info", "label_fraction_indices",
           "labelled_subset", "normalization", "read_idx", "read_subset_file", "register_dataset",
           "resize_side", "source", "stratified_subset", "subset_file_indices", "synthetic_images",
           "tensor_pair", "to_channels"]
