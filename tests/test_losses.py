"""MoCo losses against hand-written references and exact constructed cases."""
from __future__ import annotations

import math

import pytest
import torch

from sslkit.losses import (moco_v2_loss, moco_v2_similarities, moco_v3_loss,
                           moco_v3_similarities)


def _unit_rows(x: torch.Tensor) -> list[list[float]]:
    rows = []
    for r in x.double().tolist():
        norm = math.sqrt(sum(v * v for v in r))
        rows.append([v / norm for v in r])
    return rows


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _ce(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], written out."""
    top = max(logits)
    return -(logits[target] - top - math.log(sum(math.exp(v - top) for v in logits)))


def ref_moco_v2(q, k, queue, t) -> float:
    qs, ks, us = _unit_rows(q), _unit_rows(k), _unit_rows(queue)
    n, total = len(ks), 0.0
    for i, qi in enumerate(qs):
        logits = [_dot(qi, ks[i % n]) / t] + [_dot(qi, u) / t for u in us]
        total += _ce(logits, 0)
    return total / len(qs)


def ref_moco_v3(q, k, t, rank, world) -> float:
    qs, ks = _unit_rows(q), _unit_rows(k)
    n, total = len(ks) // world, 0.0
    for i, qi in enumerate(qs):
        logits = [_dot(qi, kj) / t for kj in ks]
        total += _ce(logits, rank * n + i % n)
    return 2 * t * total / len(qs)


# --------------------------------------------------------------------------- MoCo-v2
@pytest.mark.parametrize("streams", [1, 2])
@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_moco_v2_matches_reference(streams, t):
    g = torch.Generator().manual_seed(streams * 10 + int(t * 100))
    n, d, k_len = 5, 7, 11
    q = torch.randn(streams * n, d, generator=g) * 3
    k = torch.randn(n, d, generator=g) * 0.5
    queue = torch.randn(k_len, d, generator=g)
    got = moco_v2_loss(q, k, queue, t)
    assert got.dim() == 0 and got.dtype == torch.float32
    assert got.item() == pytest.approx(ref_moco_v2(q, k, queue, t), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("t", [0.1, 0.2, 1.0])
@pytest.mark.parametrize("queue_len", [1, 4, 6])
def test_moco_v2_exact_orthogonal_queue(t, queue_len):
    # q_i = k_i = 3 e_0 (normalised inside), queue rows = c_j e_j (j >= 1) orthogonal to q:
    # logits [1/T, 0, ..., 0] -> loss = log(1 + K e^{-1/T}).
    n, d = 4, queue_len + 1
    q = torch.zeros(n, d)
    q[:, 0] = 3.0
    queue = torch.zeros(queue_len, d)
    queue[torch.arange(queue_len), torch.arange(1, d)] = torch.arange(1, queue_len + 1).float()
    expected = math.log(1 + queue_len * math.exp(-1 / t))
    # float32 resolves log-sum-exp to ~1e-6 absolute at logits of size 1/T = 10
    assert moco_v2_loss(q, q.clone(), queue, t).item() == pytest.approx(expected, rel=1e-5,
                                                                         abs=2e-6)
    # antipodal queue (u_j = -q): logits [1/T, -1/T, ...] -> log(1 + K e^{-2/T})
    anti = -q[:1].repeat(queue_len, 1)
    expected = math.log(1 + queue_len * math.exp(-2 / t))
    assert moco_v2_loss(q, q.clone(), anti, t).item() == pytest.approx(expected, rel=1e-5,
                                                                        abs=2e-6)


def test_moco_v2_two_streams_pair_with_key_i_mod_n():
    # stream 2 = stream 1 -> same loss; the BF stream pairs with the SAME keys.
    g = torch.Generator().manual_seed(0)
    q, k, queue = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), torch.randn(
        12, 8, generator=g)
    one = moco_v2_loss(q, k, queue, 0.2)
    assert moco_v2_loss(torch.cat([q, q]), k, queue, 0.2).item() == pytest.approx(one.item(),
                                                                                  rel=1e-6)
    q2 = torch.randn(6, 8, generator=g)
    both = moco_v2_loss(torch.cat([q, q2]), k, queue, 0.2)
    avg = (one + moco_v2_loss(q2, k, queue, 0.2)) / 2
    assert both.item() == pytest.approx(avg.item(), rel=1e-6)


def test_moco_v2_gradient_only_into_queries():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(4, 6, generator=g, requires_grad=True)
    k = torch.randn(4, 6, generator=g, requires_grad=True)
    queue = torch.randn(8, 6, generator=g, requires_grad=True)
    moco_v2_loss(q, k, queue, 0.2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


def test_moco_v2_scale_invariant_and_bad_shapes():
    g = torch.Generator().manual_seed(2)
    q, k, queue = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), torch.randn(
        8, 6, generator=g)
    a = moco_v2_loss(q, k, queue, 0.2)
    b = moco_v2_loss(5 * q, 0.1 * k, 7 * queue, 0.2)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    with pytest.raises(ValueError):
        moco_v2_loss(torch.randn(5, 6), k, queue, 0.2)  # 5 rows are not S * 4


def test_moco_v2_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(3)
    q, k, queue = (torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g),
                   torch.randn(32, 16, generator=g))
    ref = ref_moco_v2(q, k, queue, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = moco_v2_loss(q, k, queue, 0.1)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref, rel=1e-5)


def test_moco_v2_similarities_brute_force():
    g = torch.Generator().manual_seed(4)
    q, k, queue = torch.randn(6, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(
        7, 5, generator=g)
    qs, ks, us = _unit_rows(q), _unit_rows(k), _unit_rows(queue)
    pos_ref = sum(_dot(qi, ks[i % 3]) for i, qi in enumerate(qs)) / 6
    neg_ref = sum(_dot(qi, u) for qi in qs for u in us) / (6 * 7)
    pos, neg = moco_v2_similarities(q, k, queue)
    assert pos.item() == pytest.approx(pos_ref, abs=1e-6)
    assert neg.item() == pytest.approx(neg_ref, abs=1e-6)


# --------------------------------------------------------------------------- MoCo-v3
@pytest.mark.parametrize("streams,rank,world", [(1, 0, 1), (2, 0, 1), (1, 1, 2), (2, 1, 2),
                                                (1, 2, 3)])
@pytest.mark.parametrize("t", [0.2, 1.0])
def test_moco_v3_matches_reference(streams, rank, world, t):
    g = torch.Generator().manual_seed(streams + 3 * rank + 7 * world)
    n, d = 4, 6
    q = torch.randn(streams * n, d, generator=g) * 2
    k = torch.randn(world * n, d, generator=g)
    got = moco_v3_loss(q, k, t, rank=rank, world_size=world)
    assert got.dim() == 0 and got.dtype == torch.float32
    assert got.item() == pytest.approx(ref_moco_v3(q, k, t, rank, world), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("t", [0.2, 1.0])
def test_moco_v3_exact_orthonormal_keys(t):
    # N orthonormal keys, q = k: logits are 1/T on the diagonal, 0 elsewhere:
    # loss = 2T log(1 + (N-1) e^{-1/T}).
    n = 5
    k = torch.eye(n, 8) * 2.0
    expected = 2 * t * math.log(1 + (n - 1) * math.exp(-1 / t))
    assert moco_v3_loss(k.clone(), k, t).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("t", [0.2, 1.0])
def test_moco_v3_rank_offset_exact(t):
    # world 2: 2N orthonormal keys; rank r's queries equal keys r*N..r*N+N-1.
    n = 3
    k = torch.eye(2 * n, 2 * n)
    good = 2 * t * math.log(1 + (2 * n - 1) * math.exp(-1 / t))
    # the wrong rank: positive logit 0, one negative at 1/T -> -log(1 / (e^{1/T} + 2N - 1))
    wrong = 2 * t * math.log(math.exp(1 / t) + 2 * n - 1)
    for rank in (0, 1):
        mine = k[rank * n:(rank + 1) * n]
        assert moco_v3_loss(mine, k, t, rank, 2).item() == pytest.approx(good, rel=1e-5)
        assert moco_v3_loss(mine, k, t, 1 - rank, 2).item() == pytest.approx(wrong, rel=1e-5)
        # two streams (plain + BF) both pair with this rank's keys
        two = moco_v3_loss(torch.cat([mine, mine]), k, t, rank, 2)
        assert two.item() == pytest.approx(good, rel=1e-5)


def test_moco_v3_gradient_only_into_queries_and_checks():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(4, 6, generator=g, requires_grad=True)
    k = torch.randn(8, 6, generator=g, requires_grad=True)
    moco_v3_loss(q, k, 0.2, rank=1, world_size=2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None
    with pytest.raises(ValueError):
        moco_v3_loss(q, k, 0.2, rank=2, world_size=2)
    with pytest.raises(ValueError):
        moco_v3_loss(q, torch.randn(7, 6), 0.2, rank=0, world_size=2)


def test_moco_v3_similarities_brute_force():
    g = torch.Generator().manual_seed(6)
    q, k = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)  # S=2, N=3, W=2
    qs, ks = _unit_rows(q), _unit_rows(k)
    pos, neg, npos, nneg = 0.0, 0.0, 0, 0
    for i, qi in enumerate(qs):
        for j, kj in enumerate(ks):
            if j == 3 + i % 3:
                pos, npos = pos + _dot(qi, kj), npos + 1
            else:
                neg, nneg = neg + _dot(qi, kj), nneg + 1
    got_pos, got_neg = moco_v3_similarities(q, k, rank=1, world_size=2)
    assert got_pos.item() == pytest.approx(pos / npos, abs=1e-6)
    assert got_neg.item() == pytest.approx(neg / nneg, abs=1e-6)
