"""The BatchFormer scheme keys: ``head_bn: per_stream`` (the plain stream is exactly the
network without BatchFormer), ``loss_reduction: sum`` (against the written-out terms of the
authors' builders, zhihou7/BatchFormer moco-v3/moco/builder.py and builder_v2.py) and
``frozen`` (never updated, still applied and saved)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from helpers_tiny import tiny_config
from sslkit.config import build
from sslkit.train.engine import Trainer
from sslkit.errors import ConfigError
from sslkit.methods import METHODS
from sslkit.models.backbones import build_backbone
from sslkit.train.optim import build_optimizer, param_groups
from sslkit.methods.resolve import resolved

pytestmark = pytest.mark.usefixtures("one_thread")

B, SIZE = 8, 16


def make(name: str, bf: bool = True, vit: bool = False, method_kw: dict | None = None,
         **bf_kw):
    cfg = resolved(build({}, [f"method.name={name}", "model.backbone=resnet18",
                              "method.bn_splits=1"]))
    small = dict(proj_hidden_dim=32, proj_dim=16)
    small.update(queue_size=64) if name == "mocov2" else small.update(pred_hidden_dim=32)
    small.update(method_kw or {})
    bf_kw = {"heads": 4, "dropout": 0.0, **bf_kw}
    bfc = dataclasses.replace(cfg.batchformer, enabled=bf, **bf_kw)
    torch.manual_seed(0)
    if vit:
        backbone, dim = build_backbone("vit_tiny", image_size=SIZE, patch_size=8, depth=4)
    else:
        backbone, dim = build_backbone("resnet18", cifar_stem=True, width=4)
    return METHODS[name](backbone, dim, dataclasses.replace(cfg.method, **small), bfc).train()


def without_bf(model, name: str, vit: bool = False, method_kw: dict | None = None):
    """The same method without BatchFormer, with ``model``'s weights and buffers."""
    plain = make(name, bf=False, vit=vit, method_kw=method_kw)
    plain.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith("batchformer.")})  # strict: nothing else left
    return plain


def views(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, SIZE, SIZE, generator=g), torch.randn(B, 3, SIZE, SIZE, generator=g)


# --------------------------------------------------------------------------- head_bn
EXACT = [("mocov3", False, {}), ("mocov3", True, {}),  # ResNet (v1) and ViT (BatchFormerV2)
         ("mocov2", False, {"proj_bn": True}),
         ("mocov2", False, {"proj_bn": True, "bn_splits": 2})]  # one-process shuffle-BN


@pytest.mark.parametrize("name,vit,method_kw", EXACT)
def test_per_stream_plain_stream_is_the_network_without_batchformer(name, vit, method_kw):
    """Same weights, same batch: the plain queries, the plain-stream loss and the heads'
    running statistics equal the BatchFormer-free network's bit for bit; with joint BN they
    do not (BN over 2B rows)."""
    version = {"version": "v2"} if vit else {}
    model = make(name, vit=vit, method_kw=method_kw, head_bn="per_stream", dropout=0.5,
                 **version)
    joint = make(name, vit=vit, method_kw=method_kw, dropout=0.5, **version)
    joint.load_state_dict(model.state_dict())
    plain = without_bf(model, name, vit, method_kw)
    v1, v2 = views(1)
    torch.manual_seed(3)  # the same key shuffle (split BN) in every model
    loss, _ = plain(v1, v2)
    torch.manual_seed(3)
    _, stats = model(v1, v2)
    torch.manual_seed(3)
    _, joint_stats = joint(v1, v2)
    assert torch.equal(stats["loss_plain"], loss.detach())
    assert not torch.allclose(joint_stats["loss_plain"], loss.detach(), rtol=1e-4)
    for (n, a), b in zip(model.projector.named_buffers(), plain.projector.buffers()):
        assert torch.equal(a, b), n  # running statistics from the plain stream only
    q = model._queries(v2)
    assert q.shape[0] == 2 * B and torch.equal(q[:B], plain._queries(v2))


def test_per_stream_momentum_projector_with_keys_of_both_streams():
    """keys=both: the momentum projector normalises each key stream alone, so the plain key
    stream is the plain network's keys."""
    model = make("mocov3", keys="both", head_bn="per_stream")
    plain = without_bf(model, "mocov3")
    x, _ = views(2)
    with torch.no_grad():
        keys = model.encode_keys(x)
        assert keys.shape[0] == 2 * B and torch.equal(keys[:B], plain.encode_keys(x))
        joint = make("mocov3", keys="both")
        joint.load_state_dict(model.state_dict())
        assert not torch.allclose(joint.encode_keys(x)[:B], keys[:B], rtol=1e-4)


def test_per_stream_keys_of_both_streams_under_split_bn():
    """MoCo-v2, one-process shuffle-BN (2 groups), keys=both, per_stream: the shuffled key
    batch's plain stream keeps the BatchFormer-free network's groups, so the enqueued plain
    keys are the plain network's; the BatchFormer keys follow them."""
    kw = {"proj_bn": True, "bn_splits": 2, "queue_size": 64}
    model = make("mocov2", method_kw=kw, keys="both", head_bn="per_stream", dropout=0.5)
    plain = without_bf(model, "mocov2", method_kw=kw)
    v1, v2 = views(8)
    torch.manual_seed(9)
    plain(v1, v2)
    torch.manual_seed(9)
    model(v1, v2)
    assert int(plain.queue_ptr) == B and int(model.queue_ptr) == 2 * B
    assert torch.equal(model.queue[:B], plain.queue[:B])
    assert not torch.allclose(model.queue[B:2 * B], plain.queue[:B], atol=1e-3)


# --------------------------------------------------------------------------- loss_reduction
def ctr_v3(q, k, t):
    """The authors' contrastive_loss (moco-v3/moco/builder.py), one process: unit rows,
    logits q k^T / T, labels arange(N), cross-entropy x 2T."""
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / t
    return F.cross_entropy(logits, torch.arange(len(q))) * (2 * t)


def ctr_v2(q, k, queue, t):
    """MoCo InfoNCE: logits [q.k+, q.queue] / T, cross-entropy with label 0."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / t
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def streams_of(model, backbone, head, x):
    """head(cat([h, BF(h)])) written out (dropout 0): (2B, d), plain rows first."""
    h = backbone(x)
    return head(torch.cat([h, model.batchformer.encoder(h[None])[0]]))


def test_sum_mocov3_keys_both_is_the_authors_eight_terms():
    model = make("mocov3", keys="both", loss_reduction="sum")
    v1, v2 = views(4)
    t = model.temperature
    with torch.no_grad():
        def online(x):
            return streams_of(model, model.backbone, lambda h: model.predictor(
                model.projector(h)), x)
        q1, q2 = online(v1), online(v2)
        k1 = streams_of(model, model.momentum_backbone, model.momentum_projector, v1)
        k2 = streams_of(model, model.momentum_backbone, model.momentum_projector, v2)
        n = B  # builder.py at c906e92 and later, add_bf=1: returned without division
        expected = (ctr_v3(q1[:n], k2[:n], t) + ctr_v3(q1[:n], k2[n:], t)
                    + ctr_v3(q1[n:], k2[:n], t) + ctr_v3(q1[n:], k2[n:], t)
                    + ctr_v3(q2[:n], k1[:n], t) + ctr_v3(q2[:n], k1[n:], t)
                    + ctr_v3(q2[n:], k1[:n], t) + ctr_v3(q2[n:], k1[n:], t))
    loss, stats = model(v1, v2)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # the per-stream stats stay on MoCo's scale: each the mean over the two key streams
    torch.testing.assert_close(loss.detach(), 2 * (stats["loss_plain"] + stats["loss_bf"]))


def test_sum_mocov3_keys_plain_is_four_terms():
    model = make("mocov3", loss_reduction="sum")
    v1, v2 = views(5)
    t = model.temperature
    with torch.no_grad():
        def online(x):
            return streams_of(model, model.backbone, lambda h: model.predictor(
                model.projector(h)), x)
        q1, q2 = online(v1), online(v2)
        k1 = model.momentum_projector(model.momentum_backbone(v1))
        k2 = model.momentum_projector(model.momentum_backbone(v2))
        expected = (ctr_v3(q1[:B], k2, t) + ctr_v3(q1[B:], k2, t)
                    + ctr_v3(q2[:B], k1, t) + ctr_v3(q2[B:], k1, t))
    loss, _ = model(v1, v2)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keys", ["plain", "both"])
def test_mocov2_sum_and_the_authors_mean(keys):
    """sum: every query stream x key stream term added; mean with keys=both: the authors'
    builder_v2.py, one cross-entropy over the 4B rows (l_pos of the 4 pairings, the query
    rows repeated against the queue)."""
    summed = make("mocov2", keys=keys, loss_reduction="sum")
    mean = make("mocov2", keys=keys)
    mean.load_state_dict(summed.state_dict())
    v1, v2 = views(6)
    queue, t = summed.queue.clone(), summed.temperature
    with torch.no_grad():
        q = F.normalize(streams_of(summed, summed.backbone, summed.projector, v1), dim=1)
        if keys == "both":
            kk = streams_of(summed, summed.momentum_backbone, summed.momentum_projector, v2)
        else:
            kk = summed.momentum_projector(summed.momentum_backbone(v2))
        kk = F.normalize(kk, dim=1)
        k_streams = [kk[:B], kk[B:]] if keys == "both" else [kk]
        expected_sum = sum(ctr_v2(q_s, k, queue, t) for q_s in (q[:B], q[B:]) for k in k_streams)
        if keys == "both":  # builder_v2.py forward, written as the authors do
            qp, qb, kp, kb = q[:B], q[B:], kk[:B], kk[B:]
            l_pos = torch.cat([(qp * kp).sum(1), (qp * kb).sum(1), (qb * kp).sum(1),
                               (qb * kb).sum(1)])[:, None]
            l_neg = torch.cat([qp, qp, qb, qb]) @ queue.T
            logits = torch.cat([l_pos, l_neg], dim=1) / t
            expected_mean = F.cross_entropy(logits, torch.zeros(4 * B, dtype=torch.long))
        else:
            expected_mean = expected_sum / 2
    torch.testing.assert_close(summed(v1, v2)[0], expected_sum, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean(v1, v2)[0], expected_mean, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- frozen
def test_frozen_batchformer_is_applied_everywhere_and_never_updated():
    model = make("mocov3", keys="both", frozen=True, dropout=0.5)
    bf = dict(model.batchformer.named_parameters())
    assert bf and not any(p.requires_grad for p in bf.values())
    bf_ids = {id(p) for p in bf.values()}
    assert not any(id(p) in bf_ids for pair in model.momentum_pairs() for p in pair)
    cfg = build({}, ["optim.weight_decay=0.1", "optim.momentum=0.9"]).optim
    groups = param_groups(model, cfg)
    assert [g["name"] for g in groups] == ["base"]  # no BatchFormer group
    assert not any(id(p) in bf_ids for g in groups for p in g["params"])
    # applied in the key stream too, in train mode: dropout on (the authors' key branch)
    x, _ = views(7)
    with torch.no_grad():
        a, b = model.encode_keys(x), model.encode_keys(x)
    assert a.shape[0] == 2 * B and not torch.allclose(a[B:], b[B:])
    # gradients pass through it to the backbone
    model._queries(x)[B:].pow(2).sum().backward()
    assert all(p.grad is None for p in bf.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    model.zero_grad()
    before = {n: p.detach().clone() for n, p in bf.items()}
    backbone_before = [p.detach().clone() for p in model.backbone.parameters()]
    opt = build_optimizer(model, cfg, global_batch=B)
    for step in range(3):
        loss, _ = model(*views(10 + step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.momentum_update(0.9)
    assert all(torch.equal(p, before[n]) for n, p in bf.items())
    assert any(not torch.equal(p, q) for p, q in zip(model.backbone.parameters(),
                                                     backbone_before))


def test_authors_scheme_end_to_end_keeps_the_frozen_module_in_the_checkpoint(tmp_path):
    extra = ["batchformer.keys=both", "batchformer.frozen=true", "batchformer.loss_reduction=sum",
             "batchformer.head_bn=per_stream", "train.max_steps=3", "eval.knn_every=0",
             "run.tensorboard=false", "optim.weight_decay=0.01"]
    cfg = tiny_config(tmp_path / "run", method="mocov3", bf=True, epochs=1, extra=extra)
    trainer = Trainer(cfg)
    start = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    assert not any(g["name"].startswith("batchformer") for g in trainer.optimizer.param_groups)
    trainer.fit()
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    bf_keys = [k for k in saved if k.startswith("batchformer.")]
    assert bf_keys and all(torch.equal(saved[k], start[k]) for k in bf_keys)
    assert not torch.equal(saved["backbone.conv1.weight"], start["backbone.conv1.weight"])
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    train = [r for r in rows if "loss_bf" in r]
    assert len(train) == 3
    for r in train:  # 8 terms: twice the sum of the per-stream means (2 key streams each)
        assert r["loss"] == pytest.approx(2 * (r["loss_plain"] + r["loss_bf"]), rel=1e-5)


# --------------------------------------------------------------------------- config rules
@pytest.mark.parametrize("item", ["batchformer.frozen=true", "batchformer.loss_reduction=sum",
                                  "batchformer.head_bn=per_stream"])
def test_scheme_keys_need_the_batchformer(item):
    with pytest.raises(ConfigError, match="set batchformer.enabled=true") as e:
        build({}, [item])
    assert item in str(e.value)
    build({}, [item, "batchformer.enabled=true"])
