"""Contrastive losses of MoCo-v2 and MoCo-v3, as pure functions of tensors.

Conventions: N keys per process, S query streams (S = 1 plain, S = 2 with BatchFormer: the
plain rows first, then the BatchFormer rows), feature dim D. Row i of the queries is the
positive of key ``i mod N`` (of this rank's slice of the gathered keys for MoCo-v3). Every
input is L2-normalised here and the math runs in float32 (autocast is switched off inside),
on the inputs' device. Keys and queue are constants: no gradient flows into them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _unit(x: Tensor) -> Tensor:
    """Row-wise L2 normalisation in float32."""
    return F.normalize(x.float(), dim=1)


def _streams(q: Tensor, n: int, name: str) -> int:
    if q.dim() != 2 or n <= 0 or q.shape[0] % n:
        raise ValueError(f"{name}: queries {tuple(q.shape)} must be (S*N, D) for N={n} keys")
    return q.shape[0] // n


def _no_autocast(t: Tensor) -> torch.autocast:
    return torch.autocast(device_type=t.device.type, enabled=False)


def moco_v2_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo InfoNCE loss against a queue of negatives (He et al. 2020; Chen et al. 2020).

    q (S*N, D) queries, k (N, D) positive keys, queue (K, D) negative keys; with
    q_i, k_j, u_j the L2-normalised rows and T the temperature::

        logits_i = [q_i . k_{i mod N}, q_i . u_1, ..., q_i . u_K] / T        # (S*N, 1+K)
        loss     = mean_i( -log softmax(logits_i)[0] )        # cross-entropy with label 0

    Returns a 0-dim float32 tensor; gradients flow into ``q`` only.
    """
    s = _streams(q, k.shape[0], "moco_v2_loss")
    with _no_autocast(q):
        q, k, queue = _unit(q), _unit(k.detach()), _unit(queue.detach())
        l_pos = (q * k.repeat(s, 1)).sum(dim=1, keepdim=True)  # (S*N, 1)
        l_neg = q @ queue.T  # (S*N, K)
        logits = torch.cat([l_pos, l_neg], dim=1) / temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels)


def _v3_labels(rows: int, n: int, rank: int, device: torch.device) -> Tensor:
    return rank * n + torch.arange(rows, device=device) % n  # (S*N,)


def moco_v3_loss(q: Tensor, k: Tensor, temperature: float, rank: int = 0,
                 world_size: int = 1) -> Tensor:
    """MoCo-v3 contrastive loss (Chen, Xie & He 2021), one direction ``ctr(q, k)``.

    q (S*N, D) local queries, k (W*N, D) keys gathered from the W = world_size processes in
    rank order; with unit rows and temperature T::

        logits = q k^T / T                                    # (S*N, W*N)
        label_i = rank*N + (i mod N)                          # this rank's own key
        loss   = 2T * mean_i( -log softmax(logits_i)[label_i] )

    All other W*N - 1 keys are the negatives. The 2T factor is the paper's (it makes the
    gradient scale independent of T). Returns a 0-dim float32 tensor; ``k`` is detached.
    """
    if world_size < 1 or not 0 <= rank < world_size or k.shape[0] % world_size:
        raise ValueError(f"moco_v3_loss: keys {tuple(k.shape)} do not split over "
                         f"world_size={world_size} (rank={rank})")
    n = k.shape[0] // world_size
    _streams(q, n, "moco_v3_loss")
    with _no_autocast(q):
        logits = _unit(q) @ _unit(k.detach()).T / temperature  # (S*N, W*N)
        labels = _v3_labels(q.shape[0], n, rank, q.device)
        return F.cross_entropy(logits, labels) * (2 * temperature)


@torch.no_grad()
def moco_v2_similarities(q: Tensor, k: Tensor, queue: Tensor) -> tuple[Tensor, Tensor]:
    """(mean cos(q_i, k_{i mod N}), mean over i, j of cos(q_i, queue_j)), 0-dim float32.

    The negative mean is computed as mean_i(q_i) . mean_j(u_j) (exact, O((N+K) D)).
    """
    s = _streams(q, k.shape[0], "moco_v2_similarities")
    with _no_autocast(q):
        q, k, queue = _unit(q), _unit(k), _unit(queue)
        pos = (q * k.repeat(s, 1)).sum(dim=1).mean()
        neg = q.mean(dim=0) @ queue.mean(dim=0)
    return pos, neg


@torch.no_grad()
def moco_v3_similarities(q: Tensor, k: Tensor, rank: int = 0,
                         world_size: int = 1) -> tuple[Tensor, Tensor]:
    """(mean cosine of the positive pairs, mean cosine of the other q-k pairs), 0-dim float32.

    Shapes and pairing as in :func:`moco_v3_loss`.
    """
    n = k.shape[0] // world_size
    _streams(q, n, "moco_v3_similarities")
    with _no_autocast(q):
        q, k = _unit(q), _unit(k)
        labels = _v3_labels(q.shape[0], n, rank, q.device)
        pos_sum = (q * k[labels]).sum()
        all_sum = q.sum(dim=0) @ k.sum(dim=0)  # sum over every (i, j) of q_i . k_j
        rows, cols = q.shape[0], k.shape[0]
        neg = (all_sum - pos_sum) / max(rows * (cols - 1), 1)
    return pos_sum / rows, neg
