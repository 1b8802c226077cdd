"""Weighted kNN classification on frozen features with FAISS (the only module importing faiss).

The protocol (InstDisc, Wu et al. 2018; the MoCo CIFAR monitor; DINO's ``eval_knn``):

* features are L2-normalised, so the inner product is the cosine similarity;
* for each query ``q`` the ``k`` training features with the highest similarity ``s_j`` are
  found (FAISS ``IndexFlatIP``: exact search);
* neighbour ``j`` votes for its label ``y_j`` with weight ``exp(s_j / T)``;
* the score of class ``c`` is ``sum_{j in topk(q), y_j = c} exp(s_j / T)``;
* top-1 / top-5 accuracy are read off the scores.

Search runs on a FAISS GPU index when faiss was built with GPUs (``faiss.get_num_gpus() > 0``)
and the features are on a CUDA device; otherwise on the CPU. Queries are searched in chunks of
``chunk_size`` rows, so the (chunk, N) similarity work buffer stays bounded whatever the
number of queries (full (Q, N) similarity matrices are a known out-of-memory failure).

Ties: neighbours with exactly equal similarity at the k-th position are chosen in FAISS's
internal order (not specified; in practice the lower training index first), and classes
with exactly equal scores are ranked by ``torch.topk`` (no guaranteed order). Both only
matter for exactly duplicated features; results are not bit-deterministic across
CPU/GPU indexes or faiss versions in that case.

``k`` larger than the number of training features is clamped to that number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 4096


def faiss_info() -> dict:
    """faiss version, OpenMP threads and visible GPUs (for logs and benchmarks)."""
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return {"version": faiss.__version__, "threads": faiss.omp_get_max_threads(), "gpus": gpus}


def set_faiss_threads(n: int) -> None:
    """Number of OpenMP threads faiss's CPU search uses."""
    faiss.omp_set_num_threads(int(n))


def _as_float(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    return x.detach().to(torch.float32)


def _numpy_f32(x: torch.Tensor) -> np.ndarray:
    """Contiguous float32 numpy on the CPU (what faiss wants)."""
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


def _use_gpu(*tensors: torch.Tensor) -> bool:
    return (all(t.is_cuda for t in tensors) and hasattr(faiss, "get_num_gpus")
            and faiss.get_num_gpus() > 0)


def _build_index(train: torch.Tensor):
    """An exact inner-product index over ``train`` (N, D), on the GPU when possible.

    Returns ``(index, resources)``; keep ``resources`` alive while the index is used."""
    dim = train.shape[1]
    if _use_gpu(train):
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = train.device.index if train.device.index is not None else 0
        index = faiss.GpuIndexFlatIP(res, dim, cfg)
    else:
        res, index = None, faiss.IndexFlatIP(dim)
    index.add(_numpy_f32(train))
    return index, res


def knn_search(train_features: torch.Tensor, query_features: torch.Tensor, k: int,
               chunk_size: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-k: returns ``(sims (Q, k) float32, idx (Q, k) int64)`` on the CPU.

    Both inputs (N, D) / (Q, D) are L2-normalised here; rows of the outputs are sorted by
    decreasing similarity. ``k`` is clamped to N. Queries are searched ``chunk_size`` at a time.
    """
    train = _as_float(train_features)
    query = _as_float(query_features)
    if train.ndim != 2 or query.ndim != 2 or train.shape[1] != query.shape[1]:
        raise ValueError(f"knn_search expects (N, D) and (Q, D) features, got "
                         f"{tuple(train.shape)} and {tuple(query.shape)}")
    if train.shape[0] == 0:
        raise ValueError("knn_search needs at least one training feature")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    k = max(1, min(int(k), train.shape[0]))
    train = F.normalize(train, dim=1)
    query = F.normalize(query, dim=1)
    index, _res = _build_index(train)
    sims, idx = [], []
    for start in range(0, query.shape[0], chunk_size):
        d, i = index.search(_numpy_f32(query[start:start + chunk_size]), k)  # (c, k) each
        sims.append(torch.from_numpy(d))
        idx.append(torch.from_numpy(i))
    if not sims:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    return torch.cat(sims), torch.cat(idx).long()


def vote(sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int,
         temperature: float) -> torch.Tensor:
    """Class scores (Q, C): ``score[q, c] = sum_j [y_j = c] exp(sims[q, j] / T)``.

    ``sims`` (Q, k) cosine similarities, ``neighbour_labels`` (Q, k) int64.
    """
    weights = torch.exp(sims.float() / temperature)  # (Q, k)
    scores = torch.zeros(sims.shape[0], num_classes, dtype=torch.float32, device=sims.device)
    return scores.scatter_add_(1, neighbour_labels.long(), weights)


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor,
                query_features: torch.Tensor, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Weighted-kNN class scores (Q, num_classes), float32, on the queries' device.

    train_features (N, D), train_labels (N,) int in [0, num_classes), query_features (Q, D):
    torch tensors of any float dtype on any device. Cosine top-k (FAISS inner product on
    L2-normalised features), vote weight ``exp(sim / temperature)``, summed per class.
    """
    labels = torch.as_tensor(train_labels).detach().to("cpu", torch.long)
    sims, idx = knn_search(train_features, query_features, k, chunk_size)
    scores = vote(sims, labels[idx], num_classes, temperature)
    return scores.to(query_features.device) if isinstance(query_features, torch.Tensor) else scores


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, topk: Sequence[int] = (1, 5)
                 ) -> list[int]:
    """Number of rows whose label is among the ``t`` highest scores, for each ``t`` in topk
    (``t`` is capped at the number of classes)."""
    labels = torch.as_tensor(labels).to(scores.device, torch.long)
    maxk = min(max(topk), scores.shape[1])
    pred = scores.topk(maxk, dim=1).indices  # (Q, maxk)
    hit = pred == labels[:, None]
    return [int(hit[:, :min(t, maxk)].any(dim=1).sum()) for t in topk]


@dataclass
class KnnResult:
    k: int
    temperature: float
    top1: float  # percent
    top5: float  # percent

    def as_dict(self) -> dict:
        return {"k": self.k, "t": self.temperature, "top1": self.top1, "top5": self.top5}


def knn_evaluate(train_features: torch.Tensor, train_labels: torch.Tensor,
                 test_features: torch.Tensor, test_labels: torch.Tensor, num_classes: int,
                 ks: Iterable[int] = (200,), ts: Iterable[float] = (0.1,),
                 chunk_size: int = DEFAULT_CHUNK) -> list[KnnResult]:
    """Top-1 / top-5 accuracy (percent) for every (k, T) in ``ks`` x ``ts``.

    ONE search at ``max(ks)``; the first ``k`` columns of the sorted neighbour list are the
    top-k for every smaller ``k``. Returns one :class:`KnnResult` per pair, in ks-major order.
    """
    ks = [int(k) for k in ks]
    ts = [float(t) for t in ts]
    if not ks or not ts:
        raise ValueError("knn_evaluate needs at least one k and one temperature")
    train_labels = torch.as_tensor(train_labels).detach().to("cpu", torch.long)
    test_labels = torch.as_tensor(test_labels).detach().to("cpu", torch.long)
    sims, idx = knn_search(train_features, test_features, max(ks), chunk_size)
    neigh = train_labels[idx]  # (Q, kmax)
    n = max(1, test_labels.shape[0])
    out = []
    for k in ks:
        kk = min(k, sims.shape[1])
        for t in ts:
            c1, c5 = 0, 0
            for s in range(0, sims.shape[0], chunk_size):  # bounded (chunk, C) buffers
                scores = vote(sims[s:s + chunk_size, :kk], neigh[s:s + chunk_size, :kk],
                              num_classes, t)
                a, b = topk_correct(scores, test_labels[s:s + chunk_size])
                c1, c5 = c1 + a, c5 + b
            out.append(KnnResult(k, t, 100.0 * c1 / n, 100.0 * c5 / n))
    return out


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor,
                 test_features: torch.Tensor, test_labels: torch.Tensor, num_classes: int,
                 k: int = 200, temperature: float = 0.1,
                 chunk_size: int = DEFAULT_CHUNK) -> tuple[float, float]:
    """(top-1, top-5) accuracy in percent for a single (k, T): e.g. the online monitor."""
    r = knn_evaluate(train_features, train_labels, test_features, test_labels, num_classes,
                     [k], [temperature], chunk_size)[0]
    return r.top1, r.top5
