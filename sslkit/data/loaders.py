"""Samplers and loaders: batches of ``(images uint8 (B, C, H, W), labels int64 (B,))``.

In-memory datasets are batched in the calling process by tensor indexing; datasets decoded on
the fly (ImageFolder) go through a DataLoader whose workers never crash on a bad file: the
failure travels back as data and is raised (or counted, with ``skip_corrupt``) in the main
process.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sslkit.data.datasets import InMemoryDataset
from sslkit.errors import ConfigError, DataError
from sslkit.distributed import ignore_stop_signals

log = logging.getLogger("sslkit.data")


def tensor_pair(data: Any) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` when ``data`` holds a whole split as two tensors (an
    ``(images, labels)`` pair, or a dataset with ``images`` / ``labels`` tensors), else None."""
    if isinstance(data, (tuple, list)):
        if len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            return data[0], data[1]
        return None
    images, labels = getattr(data, "images", None), getattr(data, "labels", None)
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
        return images, labels
    return None


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

    Item: ``(payload or None, label, error message or "", skipped file paths)``. A dataset
    with ``load(key) -> (payload, label, skipped paths)`` (ImageFolder and its two-crop
    wrappers) reports the files it skipped; others are indexed as ``dataset[key]``.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        try:
            if hasattr(self.dataset, "load"):
                payload, label, skipped = self.dataset.load(key)
                return payload, label, "", skipped
            image, label = self.dataset[key]
            return image, int(label), "", []
        except DataError as e:
            return None, -1, str(e), []
        except Exception as e:  # a bug or an unexpected file problem: still report it cleanly
            return None, -1, f"data: loading item {key} failed ({type(e).__name__}: {e})", []


class _GuardedCollate:
    """Batches guarded items with the dataset's own ``collate`` (default: ``torch.stack``)."""

    def __init__(self, dataset: Dataset):
        self.collate = getattr(dataset, "collate", torch.stack)

    def __call__(self, batch):
        skipped = [p for item in batch for p in item[3]]
        errors = [item[2] for item in batch if item[2]]
        if errors:
            return None, None, errors[0], skipped
        images = self.collate([item[0] for item in batch])
        labels = torch.tensor([item[1] for item in batch], dtype=torch.int64)
        return images, labels, "", skipped


def _seed_worker(worker_id: int) -> None:
    # torchrun and SLURM signal the whole process group; the main process saves the run and
    # then ends its workers itself (sslkit.train.lifecycle)
    ignore_stop_signals()
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
        num_workers = self.num_workers = worker_count(num_workers)
        generator = torch.Generator().manual_seed(int(seed))
        self.loader = DataLoader(
            _Guarded(dataset), batch_size=self.batch_size,
            shuffle=(train and sampler is None), sampler=sampler, drop_last=train,
            num_workers=num_workers, pin_memory=pin_memory and torch.cuda.is_available(),
            persistent_workers=num_workers > 0, worker_init_fn=_seed_worker,
            generator=generator, collate_fn=_GuardedCollate(dataset),
            prefetch_factor=4 if num_workers > 0 else None)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def close(self) -> None:
        """End the persistent worker processes now. They ignore SIGTERM (the stop signals are
        the main process's), so an exit while the loader is still referenced (by an error's
        traceback, until the garbage collector runs) would wait for them forever."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
            self.loader._iterator = None

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


def close_loader(loader) -> None:
    """End a :class:`WorkerLoader`'s worker processes (anything else: nothing to end). Called
    where a run ends, normally or by an exception: the workers ignore SIGTERM, so a loader
    still referenced at exit (by an exception's traceback) would keep the process waiting."""
    if isinstance(loader, WorkerLoader):
        loader.close()


def worker_count(requested: int) -> int:
    """``data.num_workers`` on this machine: at most the CPU cores this process may use (more
    processes than cores only compete; PyTorch warns about them)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(0, min(int(requested), cores))


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, sampler: Optional[Sampler] = None,
                 num_workers: int = 2, pin_memory: bool = False, seed: int = 0):
    """An iterable of ``(images uint8 (B, C, H, W), labels int64 (B,))`` with ``len()``.

    In-memory datasets (with ``images``/``labels``) are batched in-process by indexing
    (no workers: faster for small images). Others use a DataLoader (``num_workers`` seeded
    workers, at most the CPU cores available (:func:`worker_count`), persistent, ``pin_memory`` when asked and CUDA is present). Training loaders
    shuffle (via ``sampler`` if given) and drop the last partial batch; evaluation loaders
    keep the index order and every image. Both expose ``set_epoch(epoch)``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} is invalid: must be >= 1")
    if tensor_pair(dataset) is not None:
        return TensorBatchLoader(dataset, batch_size, train=train, sampler=sampler,
                                 pin_memory=pin_memory, seed=seed)
    return WorkerLoader(dataset, batch_size, train=train, sampler=sampler,
                        num_workers=num_workers, pin_memory=pin_memory, seed=seed)
