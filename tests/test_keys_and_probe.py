"""BatchFormer key schemes against hand-written references, and the online linear probe."""
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
from sslkit.methods.resolve import resolved

B, SIZE = 8, 16


def make(name: str, keys: str, queue: int = 64):
    cfg = resolved(build({}, [f"method.name={name}", "model.backbone=resnet18",
                              "batchformer.enabled=true", f"batchformer.keys={keys}",
                              "batchformer.dropout=0", "batchformer.heads=4",
                              "method.bn_splits=1"]))
    small = dict(proj_hidden_dim=32, proj_dim=16)
    small.update(queue_size=queue) if name == "mocov2" else small.update(pred_hidden_dim=32)
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18", cifar_stem=True, width=4)
    return METHODS[name](backbone, dim, dataclasses.replace(cfg.method, **small),
                         cfg.batchformer).train()


def views(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, SIZE, SIZE, generator=g), torch.randn(B, 3, SIZE, SIZE, generator=g)


def two_streams(backbone, bf, x):
    h = backbone(x)
    return torch.cat([h, bf.encoder(h[None])[0]])  # (2B, D): plain rows, then BF rows


def v2_ctr(q, k, queue, t):
    """InfoNCE written out: logits [q.k+, q.queue] / T, cross-entropy with label 0."""
    q, k, queue = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / t
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def v3_ctr(q, k, t):
    """2T x cross-entropy of q k^T / T with the diagonal as the positives."""
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / t
    return F.cross_entropy(logits, torch.arange(len(q))) * 2 * t


@pytest.mark.parametrize("keys", ["plain", "both"])
def test_mocov2_key_schemes_match_the_written_out_loss(keys):
    model = make("mocov2", keys)
    v1, v2 = views(1)
    queue = model.queue.clone()
    with torch.no_grad():
        q = model.projector(two_streams(model.backbone, model.batchformer, v1))
        if keys == "both":  # the momentum branch also passes the (shared) BatchFormer
            kk = model.momentum_projector(two_streams(model.momentum_backbone,
                                                      model.batchformer, v2))
            k_streams = [kk[:B], kk[B:]]
        else:
            k_streams = [model.momentum_projector(model.momentum_backbone(v2))]
        expected = sum(v2_ctr(q_s, k, queue, model.temperature)
                       for q_s in (q[:B], q[B:]) for k in k_streams) / (2 * len(k_streams))
    loss, stats = model(v1, v2)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert {"loss_plain", "loss_bf"} <= set(stats)
    enqueued = torch.cat([F.normalize(k, dim=1) for k in k_streams])
    assert int(model.queue_ptr) == len(enqueued)  # both key streams enqueued with 'both'
    torch.testing.assert_close(model.queue[:len(enqueued)], enqueued, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keys", ["plain", "both"])
def test_mocov3_key_schemes_match_the_written_out_loss(keys):
    model = make("mocov3", keys)
    v1, v2 = views(2)

    def streams_q(x):
        return model.predictor(model.projector(two_streams(model.backbone, model.batchformer, x)))

    def streams_k(x):
        if keys == "plain":
            return [model.momentum_projector(model.momentum_backbone(x))]
        kk = model.momentum_projector(two_streams(model.momentum_backbone, model.batchformer, x))
        return [kk[:B], kk[B:]]

    with torch.no_grad():
        t = model.temperature
        expected = 0.0
        for q, ks in ((streams_q(v1), streams_k(v2)), (streams_q(v2), streams_k(v1))):
            expected = expected + sum(v3_ctr(q_s, k, t) for q_s in (q[:B], q[B:])
                                      for k in ks) / (2 * len(ks))
    loss, _ = model(v1, v2)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_keys_both_send_no_gradient_through_the_key_path():
    model = make("mocov3", "both")
    v1, _ = views(3)
    keys = model._keys(v1)
    assert len(keys) == 2 and not any(k.requires_grad for k in keys)
    loss, _ = model(*views(3))
    loss.backward()  # the BatchFormer still learns, through the queries
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.batchformer.parameters())


def test_keys_both_config_rules():
    with pytest.raises(ConfigError, match=r"x 2 \(batchformer.keys=both"):
        resolved(build({}, ["batchformer.enabled=true", "batchformer.keys=both",
                            "train.batch_size=16", "method.queue_size=80"]))
    with pytest.raises(ConfigError, match="set batchformer.enabled=true"):
        build({}, ["batchformer.keys=both"])
    resolved(build({}, ["batchformer.enabled=true", "batchformer.keys=both",
                        "train.batch_size=16", "method.queue_size=96"]))


# --------------------------------------------------------------------------- online probe
def _run(out, probe: bool):
    cfg = tiny_config(out, epochs=2, extra=["run.tensorboard=false",
                                            f"eval.online_probe={str(probe).lower()}"])
    trainer = Trainer(cfg)
    trainer.fit()
    return trainer


def test_online_probe_leaves_the_backbone_alone_and_logs(tmp_path):
    """The same run with and without the probe ends with identical weights and losses; the
    probe's train accuracy is logged per epoch and its test accuracy at the kNN epochs."""
    with_probe, without = _run(tmp_path / "a", True), _run(tmp_path / "b", False)
    a, b = with_probe.method.state_dict(), without.method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(ln) for ln in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    other = [json.loads(ln)["loss"] for ln in (tmp_path / "b" / "metrics.jsonl").read_text()
             .splitlines() if "loss" in json.loads(ln)]
    assert losses == other
    train = [r for r in lines if "probe_train_top1" in r]
    test = [r for r in lines if "probe_test_top1" in r]
    assert [r["epoch"] for r in train] == [1, 2] and len(test) == 2  # knn_every=1
    assert all(0 <= r["probe_train_top1"] <= 100 and r["probe_train_loss"] > 0 for r in train)
    probe_state = torch.load(tmp_path / "a" / "checkpoints" / "last.pt",
                             weights_only=True)["online_probe"]
    assert probe_state["head"]["weight"].shape == (4, 32)  # 4 classes x 32-d features
