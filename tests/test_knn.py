"""sslkit.knn against the protocol's definition (InstDisc / MoCo monitor / DINO eval_knn)."""
from __future__ import annotations

import math

import pytest
import torch

from sslkit.knn import knn_accuracy, knn_evaluate, knn_predict, knn_search, topk_correct


def reference_scores(train, labels, query, num_classes, k, t):
    """Hand-written definition: explicit cosine matrix, top-k, exp(sim/T), per-class sum."""
    train = train.double()
    query = query.double()
    tn = train / train.norm(dim=1, keepdim=True)
    qn = query / query.norm(dim=1, keepdim=True)
    sim = qn @ tn.T  # (Q, N)
    out = torch.zeros(query.shape[0], num_classes, dtype=torch.float64)
    for q in range(query.shape[0]):
        top = torch.topk(sim[q], k)
        for s, j in zip(top.values.tolist(), top.indices.tolist()):
            out[q, int(labels[j])] += math.exp(s / t)
    return out


def reference_accuracy(scores, labels, top):
    """(lowest, highest) top-`top` accuracy over every way of breaking ties between classes
    with equal scores (e.g. the zero-vote classes when k is small)."""
    sure = possible = 0
    for q in range(scores.shape[0]):
        mine = float(scores[q, int(labels[q])])
        above = sum(float(v) > mine for v in scores[q])
        equal = sum(float(v) == mine for v in scores[q]) - 1
        sure += int(above + equal < top)
        possible += int(above < top)
    n = scores.shape[0]
    return 100.0 * sure / n, 100.0 * possible / n


def clusters(n_per_class, num_classes, dim, spread, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g)
    centres = 10 * centres / centres.norm(dim=1, keepdim=True)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return x, labels


@pytest.mark.parametrize("k, t", [(1, 0.1), (7, 0.07), (20, 0.5)])
def test_knn_predict_matches_reference(k, t):
    g = torch.Generator().manual_seed(k)
    train = torch.randn(300, 16, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    query = torch.randn(40, 16, generator=g)
    got = knn_predict(train, labels, query, num_classes=5, k=k, temperature=t)
    want = reference_scores(train, labels, query, 5, k, t)
    assert got.shape == (40, 5) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_scale_invariance_and_dtype():
    # Cosine similarity: scaling features changes nothing; half precision inputs are accepted.
    g = torch.Generator().manual_seed(1)
    train = torch.randn(200, 8, generator=g)
    labels = torch.randint(0, 3, (200,), generator=g)
    query = torch.randn(10, 8, generator=g)
    a = knn_predict(train, labels, query, 3, k=10)
    b = knn_predict(train * 7.5, labels, query * 0.01, 3, k=10)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    c = knn_predict(train.bfloat16(), labels, query.half(), 3, k=10)
    assert c.dtype == torch.float32 and c.shape == (10, 3)


def test_well_separated_clusters_are_classified_perfectly():
    # Same centres (same seed), test points = train points of the first 20 per class plus
    # fresh noise; centres are 10 apart in norm, the noise is ~0.3*sqrt(32).
    train, ytrain = clusters(50, 6, 32, 0.3, seed=0)
    test, ytest = clusters(20, 6, 32, 0.3, seed=0)
    test = test + 0.3 * torch.randn(test.shape, generator=torch.Generator().manual_seed(123))
    top1, top5 = knn_accuracy(train, ytrain, test, ytest, 6, k=20, temperature=0.1)
    assert top1 == 100.0 and top5 == 100.0


def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(2)
    train = torch.randn(500, 24, generator=g)
    labels = torch.randint(0, 10, (500,), generator=g)
    query = torch.randn(123, 24, generator=g)
    full = knn_predict(train, labels, query, 10, k=50, chunk_size=10_000)
    for chunk in (1, 7, 64):
        torch.testing.assert_close(knn_predict(train, labels, query, 10, k=50, chunk_size=chunk),
                                   full)


def test_sweep_from_one_search_equals_separate_calls():
    g = torch.Generator().manual_seed(3)
    train = torch.randn(400, 12, generator=g)
    ytrain = torch.randint(0, 8, (400,), generator=g)
    test = torch.randn(90, 12, generator=g)
    ytest = torch.randint(0, 8, (90,), generator=g)
    ks, ts = [5, 20, 100], [0.07, 0.1, 1.0]
    sweep = knn_evaluate(train, ytrain, test, ytest, 8, ks, ts, chunk_size=32)
    assert [(r.k, r.temperature) for r in sweep] == [(k, t) for k in ks for t in ts]
    for r in sweep:
        scores = knn_predict(train, ytrain, test, 8, k=r.k, temperature=r.temperature)
        ref = reference_scores(train, ytrain, test, 8, r.k, r.temperature)
        lo1, hi1 = reference_accuracy(ref, ytest, 1)
        lo5, hi5 = reference_accuracy(ref, ytest, 5)
        assert lo1 == hi1 and r.top1 == pytest.approx(lo1)  # no ties for the top class here
        assert lo5 - 1e-9 <= r.top5 <= hi5 + 1e-9
        assert r.top1 == pytest.approx(100.0 * topk_correct(scores, ytest, (1,))[0] / 90)


def test_search_sorted_and_k_clamped():
    g = torch.Generator().manual_seed(4)
    train = torch.randn(30, 4, generator=g)
    query = torch.randn(5, 4, generator=g)
    sims, idx = knn_search(train, query, k=1000)
    assert sims.shape == (5, 30) and idx.shape == (5, 30)
    assert torch.all(sims[:, :-1] >= sims[:, 1:] - 1e-6)
    assert sorted(idx[0].tolist()) == list(range(30))  # every training point, once
    assert float(sims.max()) <= 1 + 1e-5


def test_topk_with_fewer_than_five_classes():
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    labels = torch.tensor([1, 1, 0])
    assert topk_correct(scores, labels, (1, 5)) == [1, 3]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_give_the_same_scores():
    g = torch.Generator().manual_seed(5)
    train = torch.randn(300, 16, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    query = torch.randn(40, 16, generator=g)
    cpu = knn_predict(train, labels, query, 5, k=20)
    dev = torch.device("cuda")
    gpu = knn_predict(train.to(dev), labels.to(dev), query.to(dev), 5, k=20)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
