"""Evaluation over several processes (torchrun): which images each process handles.

Feature extraction: the single-process batches (``eval.batch_size`` consecutive images) are
dealt round-robin, batch ``b`` to rank ``b mod W``, so every image is computed in exactly the
batch it would be in one process (bit-identical features), then gathered back in order.

The standard probe: every epoch's seeded permutation is cut into global batches of
``eval.batch_size``; rank ``r`` takes rows ``r, r + W, ...`` of each, so the processes
together see each global batch once (the gradient is the global batch's, see
:mod:`linear_eval.standard`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from sslkit import distributed as dist


def batch_shard(n: int, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """Indices of the images of batches ``rank, rank + world, ...`` (in order)."""
    starts = range(rank * batch_size, n, world * batch_size)
    if not starts:
        return torch.empty(0, dtype=torch.long)
    return torch.cat([torch.arange(s, min(s + batch_size, n)) for s in starts])


def extract_sharded(extract: Callable[[Any], tuple[torch.Tensor, torch.Tensor]], dataset,
                    source: Callable[[Any], Any], batch_size: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``extract(source(dataset))`` with the work split over the processes (module doc):
    every process returns the features and labels of the whole dataset, in order."""
    world = dist.get_world_size()
    if world == 1:
        return extract(source(dataset))
    rank, n = dist.get_rank(), len(dataset)
    feats, labels = extract(source(dataset.subset(batch_shard(n, batch_size, rank, world))))
    if feats.numel() == 0:
        feats = torch.zeros(0, _feature_dim(extract, dataset, source))
    parts_f = dist.all_gather_sizes(feats.contiguous())
    parts_y = dist.all_gather_sizes(labels.contiguous())
    out_f, out_y, taken = [], [], [0] * world
    for b, start in enumerate(range(0, n, batch_size)):
        r, size = b % world, min(batch_size, n - start)
        out_f.append(parts_f[r][taken[r]:taken[r] + size])
        out_y.append(parts_y[r][taken[r]:taken[r] + size])
        taken[r] += size
    return torch.cat(out_f), torch.cat(out_y)


def _feature_dim(extract, dataset, source) -> int:
    """The feature size, for a process that got no batch (more processes than batches)."""
    f, _ = extract(source(dataset.subset(torch.arange(1))))
    return f.shape[1]


def rank_rows(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's rows ``rank, rank + world, ...`` of a global batch of indices."""
    return batch[rank::world]
