"""MoCo-v2 / MoCo-v3 (+ BatchFormer): one-batch steps, updates, names, plumbing, DDP."""
from __future__ import annotations

import copy
import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslkit.config import build
from sslkit.errors import ConfigError
from sslkit.losses import moco_v2_loss, moco_v3_loss
from sslkit.methods import METHODS, MoCoV2, MoCoV3, build_method
from sslkit.train.optim import cosine_momentum
from sslkit.models.backbones import build_backbone
from sslkit.models.heads import build_mlp
from sslkit.methods.resolve import resolved

B, SIZE = 8, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def make_backbone(kind: str) -> tuple[nn.Module, int]:
    """A tiny backbone: ResNet-18 CIFAR stem at width 16 (128-d) or a 1-block ViT-Tiny."""
    if kind == "resnet":
        return build_backbone("resnet18", cifar_stem=True, width=16)
    return build_backbone("vit_tiny", image_size=SIZE, patch_size=8, depth=1,
                          freeze_patch_embed=True)


def make_model(name: str, kind: str = "resnet", bf: bool = False, seed: int = 0, **method_kw):
    backbone_name = "resnet18" if kind == "resnet" else "vit_tiny"
    cfg = resolved(build({}, [f"method.name={name}", f"model.backbone={backbone_name}"]))
    small = dict(proj_hidden_dim=32, proj_dim=16)
    small.update(queue_size=64) if name == "mocov2" else small.update(pred_hidden_dim=32)
    small.update(method_kw)
    method = dataclasses.replace(cfg.method, **small)
    bfc = dataclasses.replace(cfg.batchformer, enabled=bf)
    torch.manual_seed(seed)
    backbone, dim = make_backbone(kind)
    return METHODS[name](backbone, dim, method, bfc)


def views(seed: int = 0, n: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randn(n, 3, SIZE, SIZE, generator=g)


def online_params(model):
    return {n: p for n, p in model.named_parameters() if "momentum" not in n}


def momentum_params(model):
    return {n: p for n, p in model.named_parameters() if "momentum" in n}


# --------------------------------------------------------------------------- one step
@pytest.mark.parametrize("kind", ["resnet", "vit"])
@pytest.mark.parametrize("bf", [False, True])
@pytest.mark.parametrize("name", ["mocov2", "mocov3"])
def test_one_batch_step(name, bf, kind):
    model = make_model(name, kind, bf).train()
    loss, stats = model(*views())
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    expected = {"pos_sim", "neg_sim"} | ({"loss_plain", "loss_bf"} if bf else set())
    assert set(stats) == expected
    for v in stats.values():
        assert v.dim() == 0 and not v.requires_grad and torch.isfinite(v)
    if bf:  # each ctr is the mean over 2B rows: the average of the two streams
        torch.testing.assert_close(loss.detach(), (stats["loss_plain"] + stats["loss_bf"]) / 2)
    loss.backward()
    trainable = {n: p for n, p in online_params(model).items() if p.requires_grad}
    assert trainable and all(not n.startswith("momentum") for n in trainable)
    for n, p in trainable.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    if bf:
        bf_params = {n: p for n, p in trainable.items() if "batchformer" in n}
        assert bf_params and all(p.grad.abs().sum() > 0 for p in bf_params.values())
    for n, p in momentum_params(model).items():
        assert not p.requires_grad and p.grad is None, n


@pytest.mark.parametrize("name", ["mocov2", "mocov3"])
def test_loss_decreases_on_a_fixed_batch(name):
    model = make_model(name, "resnet", bf=True, queue_size=4096).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    v1, v2 = views(1)
    queue = model.queue.clone() if name == "mocov2" else None
    losses = []
    for _ in range(20):
        if queue is not None:  # keep the negatives fixed: enqueued copies of this very batch
            model.queue.copy_(queue)  # would otherwise turn into its own negatives
        torch.manual_seed(len(losses))
        loss, _ = model(v1, v2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.momentum_update(0.99)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


# --------------------------------------------------------------------------- updates
@torch.no_grad()
def _expected_keys(model, x):
    """Keys from a copy of the momentum encoder (train mode: batch-statistics BN)."""
    mb, mp = copy.deepcopy(model.momentum_backbone), copy.deepcopy(model.momentum_projector)
    return F.normalize(mp(mb(x)), dim=1)


def test_step_updates_bf_momentum_and_queue():
    model = make_model("mocov2", "resnet", bf=True, queue_size=16).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    bf_before = {n: p.detach().clone() for n, p in model.batchformer.named_parameters()}
    mom_before = {n: p.detach().clone() for n, p in momentum_params(model).items()}
    queue_before, ptr_before = model.queue.clone(), int(model.queue_ptr)
    v1, v2 = views(2)
    keys = _expected_keys(model, v2)

    loss, _ = model(v1, v2)
    opt.zero_grad()
    loss.backward()
    opt.step()

    for n, p in model.batchformer.named_parameters():
        assert not torch.equal(p, bf_before[n]), f"batchformer.{n} did not change"
    assert ptr_before == 0 and int(model.queue_ptr) == B
    torch.testing.assert_close(model.queue[:B], keys, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.queue[B:], queue_before[B:])
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(16))
    for n, p in momentum_params(model).items():
        assert torch.equal(p, mom_before[n]), n  # the optimizer never touches them

    m = 0.9
    model.momentum_update(m)
    online = dict(model.backbone.named_parameters(prefix="backbone"))
    online.update(model.projector.named_parameters(prefix="projector"))
    assert len(online) == len(mom_before)
    for n, p in momentum_params(model).items():
        src = online[n.replace("momentum_", "", 1)]
        torch.testing.assert_close(p, m * mom_before[n] + (1 - m) * src, rtol=1e-6, atol=1e-7)

    # second step wraps the pointer around: K = 2B
    v3, v4 = views(3)
    keys2 = _expected_keys(model, v4)
    model(v3, v4)
    assert int(model.queue_ptr) == 0
    torch.testing.assert_close(model.queue[B:], keys2, rtol=1e-5, atol=1e-6)


def test_symmetric_enqueues_both_key_sets():
    model = make_model("mocov2", "resnet", bf=True, symmetric=True, queue_size=32).train()
    v1, v2 = views(4)
    k1, k2 = _expected_keys(model, v1), _expected_keys(model, v2)
    model(v1, v2)
    assert int(model.queue_ptr) == 2 * B
    torch.testing.assert_close(model.queue[:2 * B], torch.cat([k1, k2]), rtol=1e-5, atol=1e-6)


def test_eval_forward_does_not_enqueue_or_use_bf():
    model = make_model("mocov2", "resnet", bf=True).eval()
    v1, v2 = views(5)
    queue = model.queue.clone()
    loss_a, stats = model(v1, v2)
    assert set(stats) == {"pos_sim", "neg_sim"}
    with torch.no_grad():
        for p in model.batchformer.parameters():
            p.add_(torch.randn_like(p))
    loss_b, _ = model(v1, v2)
    assert torch.equal(loss_a, loss_b) and torch.equal(model.queue, queue)
    assert int(model.queue_ptr) == 0


@pytest.mark.parametrize("name", ["mocov2", "mocov3"])
def test_backbone_features_do_not_depend_on_bf(name):
    model = make_model(name, "resnet", bf=True).eval()
    x, _ = views(6)

    def train_loss(m):  # one train-mode forward on a copy (it updates BN running stats)
        torch.manual_seed(0)
        return copy.deepcopy(m).train()(*views(6))[0].detach()

    feats, eval_loss, before = model.backbone(x), model(*views(6))[0], train_loss(model)
    with torch.no_grad():
        for p in model.batchformer.parameters():
            p.add_(torch.randn_like(p))
    assert torch.equal(model.backbone(x), feats)
    assert torch.equal(model(*views(6))[0], eval_loss)
    assert not any("BatchFormer" in type(m).__name__ for m in model.backbone.modules())
    assert not torch.allclose(train_loss(model), before)  # in training the BF is wired in


# --------------------------------------------------------------------------- plumbing
def test_v2_eval_loss_is_the_paper_formula():
    model = make_model("mocov2", "resnet").eval()
    v1, v2 = views(7)
    with torch.no_grad():
        q = model.projector(model.backbone(v1))
        k = F.normalize(model.momentum_projector(model.momentum_backbone(v2)), dim=1)
        expected = moco_v2_loss(q, k, model.queue, model.temperature)
        loss, _ = model(v1, v2)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_v3_eval_loss_is_the_paper_formula(kind):
    model = make_model("mocov3", kind).eval()
    v1, v2 = views(8)
    with torch.no_grad():
        q1, q2 = (model.predictor(model.projector(model.backbone(v))) for v in (v1, v2))
        k1, k2 = (model.momentum_projector(model.momentum_backbone(v)) for v in (v1, v2))
        t = model.temperature
        expected = moco_v3_loss(q1, k2, t) + moco_v3_loss(q2, k1, t)
        loss, _ = model(v1, v2)
    torch.testing.assert_close(loss, expected)


def test_bf16_autocast_step():
    model = make_model("mocov3", "resnet", bf=True).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = model(*views(9))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


# --------------------------------------------------------------------------- structure
@pytest.mark.parametrize("name", ["mocov2", "mocov3"])
def test_state_dict_names(name):
    model = make_model(name, "resnet", bf=True)
    sd = model.state_dict()
    backbone_keys = {"backbone." + k for k in model.backbone.state_dict()}
    assert {k for k in sd if k.startswith("backbone.")} == backbone_keys
    assert any("batchformer" in k for k in sd)
    assert all(k.startswith("batchformer.") for k in sd if "batchformer" in k)
    momentum = [k for k in sd if "momentum" in k]
    assert momentum and not any("batchformer" in k for k in momentum)
    assert not any("predictor" in k for k in momentum)
    # the momentum encoder mirrors backbone + projector exactly (no BF, no predictor)
    mirror = {k.replace("momentum_", "", 1) for k in momentum}
    assert mirror == {k for k in sd if k.startswith(("backbone.", "projector."))}
    bf_params = [p for n, p in model.named_parameters() if "batchformer" in n]
    assert bf_params and all(p.requires_grad for p in bf_params)
    if name == "mocov2":
        assert sd["queue"].shape == (64, 16) and sd["queue_ptr"].dtype == torch.long


@pytest.mark.parametrize("name", ["mocov2", "mocov3"])
@pytest.mark.parametrize("backbone", ["resnet18", "vit_tiny"])
def test_build_method_from_config(name, backbone):
    cfg = build({}, [f"method.name={name}", f"model.backbone={backbone}", "model.width=16",
                     "model.cifar_stem=true", "model.patch_size=8", "model.vit_depth=1",
                     f"data.image_size={SIZE}", "batchformer.enabled=true",
                     "method.proj_hidden_dim=32", "method.pred_hidden_dim=32",
                     "method.queue_size=64", "train.batch_size=8"])
    model = build_method(cfg)
    assert isinstance(model, MoCoV2 if name == "mocov2" else MoCoV3)
    assert model.batchformer is not None
    assert model.temperature == resolved(cfg).method.temperature == {"resnet18": {
        "mocov2": 0.2, "mocov3": 1.0}, "vit_tiny": {"mocov2": 0.2, "mocov3": 0.2}}[backbone][name]
    if name == "mocov3":  # the ViT predictor ends with BN, the ResNet one does not
        assert isinstance(model.predictor[-1], nn.BatchNorm1d) == backbone.startswith("vit")
    loss, _ = model.train()(*views(12))
    assert torch.isfinite(loss)


def test_disabled_bf_has_no_params():
    model = make_model("mocov3", "resnet", bf=False)
    assert model.batchformer is None
    assert not any("batchformer" in k for k in model.state_dict())


def test_heads_follow_the_reference_code():
    v2 = make_model("mocov2", "resnet")
    assert [type(m) for m in v2.projector] == [nn.Linear, nn.ReLU, nn.Linear]
    assert all(m.bias is not None for m in v2.projector if isinstance(m, nn.Linear))
    for kind, proj_len, pred_last in (("resnet", 5, nn.Linear), ("vit", 8, nn.BatchNorm1d)):
        v3 = make_model("mocov3", kind)
        assert len(v3.projector) == proj_len  # 2 (ResNet) / 3 (ViT) Linear layers
        assert isinstance(v3.projector[-1], nn.BatchNorm1d) and not v3.projector[-1].affine
        assert isinstance(v3.predictor[-1], pred_last)
        linears = [m for m in [*v3.projector, *v3.predictor] if isinstance(m, nn.Linear)]
        assert all(m.bias is None for m in linears)


def test_build_mlp_shapes():
    mlp = build_mlp(6, 10, 3, 3, hidden_bn=True, last_bn=True)
    assert [type(m) for m in mlp] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [
        nn.Linear, nn.BatchNorm1d]
    assert [m.bias is None for m in mlp if isinstance(m, nn.Linear)] == [True] * 3
    assert mlp(torch.randn(4, 6)).shape == (4, 3)
    one = build_mlp(6, 10, 3, 1)
    assert len(one) == 1 and one[0].bias is not None and one[0].in_features == 6
    assert build_mlp(6, 10, 3, 2, hidden_bn=False, bias=False)[0].bias is None
    with pytest.raises(ValueError):
        build_mlp(6, 10, 3, 0)


def test_cosine_momentum():
    assert cosine_momentum(0, 100) == 0.99
    assert cosine_momentum(100, 100) == 1.0
    assert cosine_momentum(50, 100) == pytest.approx(0.995)
    assert cosine_momentum(0, 10, base=0.9, final=0.99) == 0.9
    values = [cosine_momentum(s, 100) for s in range(101)]
    assert values == sorted(values)
    assert cosine_momentum(150, 100) == 1.0


@pytest.mark.parametrize("symmetric,queue,valid", [(False, 20, 16), (True, 24, 16),
                                                   (False, 4, 8)])
def test_queue_size_must_be_a_multiple(symmetric, queue, valid):
    model = make_model("mocov2", "resnet", symmetric=symmetric, queue_size=queue).train()
    with pytest.raises(ConfigError) as e:
        model(*views())
    msg = str(e.value)
    assert "method.queue_size" in msg and str(B) in msg and "\n" not in msg
    assert f"method.queue_size={valid}" in msg


# --------------------------------------------------------------------------- devices
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["mocov2", "mocov3"])
def test_cuda_step(name):
    model = make_model(name, "resnet", bf=True).cuda().train()
    v1, v2 = (v.cuda() for v in views())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, stats = model(v1, v2)
    loss.backward()
    model.momentum_update(0.99)
    assert loss.is_cuda and torch.isfinite(loss)
    assert all(v.is_cuda for v in stats.values())


# --------------------------------------------------------------------------- two processes
def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as tdist

    from sslkit.models.batchformer import BatchFormer

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world)
    torch.set_num_threads(1)
    n = B // world
    v1, v2 = views(10)
    local = slice(rank * n, (rank + 1) * n)
    result = {}
    # MoCo-v2: shuffle-BN must hand back each image's own key; the queue gets all keys.
    v2m = make_model("mocov2", "resnet", queue_size=16).train()
    v2m.momentum_backbone.eval()  # running-stat BN: a key depends on its own image only
    v2m.momentum_projector.eval()
    v2m(v1[local], v2[local])
    result["queue"], result["ptr"] = v2m.queue.clone(), int(v2m.queue_ptr)
    # ... and with batch-statistics BN the shuffled keys differ from local-batch keys
    v2m.momentum_backbone.train()
    v2m.momentum_projector.train()
    result["shuffled"] = not torch.allclose(v2m._keys(v2[local])[0], _expected_keys(v2m, v2[local]))
    # MoCo-v3: labels offset by rank*N (eval mode: per-sample deterministic)
    v3m = make_model("mocov3", "resnet").eval()
    with torch.no_grad():
        result["v3_loss"] = v3m(v1[local], v2[local])[0]
    # BatchFormer scope "global": attend over the gathered batch, keep this rank's rows
    torch.manual_seed(0)
    bf = BatchFormer(16, dropout=0.0).train()
    h = torch.randn(B, 16, generator=torch.Generator().manual_seed(11))
    mine = h[local].clone().requires_grad_(True)
    out_bf = bf(mine, scope="global")
    out_bf[n:].sum().backward()
    result["bf"], result["bf_grad_ok"] = out_bf.detach(), mine.grad is not None
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    # Leave together: a rank that tears gloo down while its peer is still in a collective
    # makes the peer abort ("terminate called without an active exception").
    tdist.barrier()
    tdist.destroy_process_group()


def test_two_process_gloo(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    v1, v2 = views(10)
    ref2 = make_model("mocov2", "resnet", queue_size=16)
    ref2.momentum_backbone.eval()
    ref2.momentum_projector.eval()
    keys = _expected_keys(ref2, v2)
    for r in res:
        assert r["ptr"] == B and r["shuffled"]
        torch.testing.assert_close(r["queue"][:B], keys, rtol=1e-5, atol=1e-5)
    ref3 = make_model("mocov3", "resnet").eval()
    with torch.no_grad():
        full = ref3(v1, v2)[0]
    torch.testing.assert_close((res[0]["v3_loss"] + res[1]["v3_loss"]) / 2, full,
                               rtol=1e-5, atol=1e-5)
    from sslkit.models.batchformer import BatchFormer

    torch.manual_seed(0)
    bf = BatchFormer(16, dropout=0.0).train()
    h = torch.randn(B, 16, generator=torch.Generator().manual_seed(11))
    enc = bf.encode(h).detach()
    for rank, r in enumerate(res):
        sl = slice(rank * B // 2, (rank + 1) * B // 2)
        torch.testing.assert_close(r["bf"], torch.cat([h[sl], enc[sl]]), rtol=1e-5, atol=1e-5)
        assert r["bf_grad_ok"]


def test_mocov2_default_head_is_feature_dim_wide():
    """MoCo-v2's official head is Linear(D, D) - ReLU - Linear(D, 128) (D = feature dim)."""
    from sslkit import config
    from sslkit.methods import MoCoV2

    cfg = resolved(config.build({}, ["method.queue_size=64", "train.batch_size=8"]))
    method = dataclasses.replace(cfg.method, proj_hidden_dim=None)  # null: the feature dim
    model = MoCoV2(nn.Sequential(nn.Flatten(), nn.Linear(12, 24)), 24, method,
                   cfg.batchformer)
    linears = [m for m in model.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(24, 24), (24, 128)]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.projector)
