"""BatchFormerV2: batch attention on every token between ViT blocks, two streams, removed at
test time (Hou, Yu & Tao, arXiv 2204.01254; github.com/zhihou7/BatchFormer)."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from error_cases import VIT2
from helpers_tiny import tiny_config
from sslkit.io.checkpoint import load_state_dict_file
from sslkit.config import build
from sslkit.models.batchformer import default_insert_after
from sslkit.train.engine import Trainer
from sslkit.errors import ConfigError
from sslkit.export import backbone_state_dict
from sslkit.methods import METHODS, build_method
from sslkit.models.backbones import build_backbone
from sslkit.models.batchformer import BatchFormer, BatchFormerV2
from sslkit.train.optim import build_optimizer, build_scheduler, param_groups
from sslkit.methods.resolve import resolved
from test_batchformer import reference_layer

B, SIZE, PATCH, DEPTH = 6, 16, 8, 4  # 4 patches + the class token: L = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def vit(depth: int = DEPTH, seed: int = 0):
    torch.manual_seed(seed)
    net, dim = build_backbone("vit_tiny", image_size=SIZE, patch_size=PATCH, depth=depth)
    return net.train(), dim


def bf2(dim: int = 192, depth: int = DEPTH, dropout: float = 0.0, **kw) -> BatchFormerV2:
    torch.manual_seed(1)
    return BatchFormerV2(dim, depth, dropout=dropout, **kw).train()


def images(n: int = B, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def tokens_in(net, x):
    """The tokens entering block 0, as torchvision's ViT computes them."""
    t = net._process_input(x)
    t = torch.cat([net.class_token.expand(x.shape[0], -1, -1), t], dim=1)
    return net.encoder.dropout(t + net.encoder.pos_embedding)


def reference_bf(layer, t: torch.Tensor) -> torch.Tensor:
    """The BatchFormer layer on tokens (B, L, D) written out: position l's B tokens are ONE
    sequence (reference_layer), positions are independent."""
    return torch.stack([reference_layer(layer, t[:, l]) for l in range(t.shape[1])], dim=1)


def reference_v2(net, bf: BatchFormerV2, x: torch.Tensor) -> torch.Tensor:
    """The second stream by hand: blocks, the BF layer after each insertion point, blocks."""
    t = tokens_in(net, x)
    for i, block in enumerate(net.encoder.layers):
        t = block(t)
        if i in bf.insert_after:
            k = bf.insert_after.index(i)
            t = reference_bf(bf.blocks[0 if bf.shared else k].encoder.layers[0], t)
    return net.encoder.ln(t)[:, 0]


# --------------------------------------------------------------------------- the module
def test_default_insertion_rule():
    assert default_insert_after(12) == [8]  # the authors' DeiT placement
    assert [default_insert_after(d) for d in (1, 2, 3, 4, 6, 8)] == [[0], [0], [1], [2], [3], [5]]
    assert bf2().insert_after == [2]
    assert bf2(depth=12).insert_after == [8]


def test_defaults_follow_the_authors():
    m = BatchFormerV2(64, 12)
    assert len(m.blocks) == 1 and m.shared and m.insert_after == [8]
    layer = m.blocks[0].encoder.layers[0]
    assert layer.self_attn.num_heads == 4 and layer.linear1.out_features == 64
    assert layer.dropout.p == 0.5 and layer.norm_first is False


@pytest.mark.parametrize("points", [[1], [0, 2]])
def test_shapes_B_before_the_first_point_2B_after(points):
    net, dim = vit()
    bf = bf2(dim, insert_after=points)
    seen = {}
    hooks = [blk.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o.shape[0]))
             for k, blk in enumerate(net.encoder.layers)]
    out = bf(net, images())
    for h in hooks:
        h.remove()
    assert out.shape == (2 * B, dim)
    assert seen == {k: B if k <= points[0] else 2 * B for k in range(DEPTH)}


@pytest.mark.parametrize("points,shared", [([1], True), ([0, 2], True), ([0, 2], False)])
def test_streams_match_the_plain_vit_and_a_hand_written_reference(points, shared):
    net, dim = vit()
    bf = bf2(dim, insert_after=points, shared=shared)
    assert len(bf.blocks) == (1 if shared else len(points))
    x = images()
    out = bf(net, x)
    plain = net(x)
    assert torch.equal(out[:B], plain)  # bit for bit: the ViT's blocks keep samples apart
    with torch.no_grad():
        torch.testing.assert_close(out[B:], reference_v2(net, bf, x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out[B:], plain, atol=1e-3)


def test_plain_stream_is_bitwise_under_bf16_autocast_and_bf_runs_in_fp32():
    net, dim = vit()
    bf = bf2(dim, insert_after=[0, 2])
    dtypes = []
    bf.blocks[0].encoder.layers[0].self_attn.register_forward_hook(
        lambda m, i, o: dtypes.append((i[0].dtype, o[0].dtype)))
    x = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bf(net, x)
        plain = net(x)
        block_out = net.encoder.layers[0](tokens_in(net, x))
    assert block_out.dtype == torch.float32  # a ViT's residual stream stays fp32 under autocast
    assert torch.equal(out[:B], plain)
    assert dtypes == [(torch.float32, torch.float32)] * 2  # attention in fp32 at both points


def test_mixes_samples_not_positions():
    bf = bf2(32, depth=2, insert_after=[0])
    t = torch.randn(5, 7, 32)
    base = bf.mix_tokens(0, t)[5:]
    t2 = t.clone()
    t2[0, 3] += torch.randn(32)  # sample 0, position 3
    moved = bf.mix_tokens(0, t2)[5:]
    changed = ~torch.isclose(base, moved, atol=1e-6).all(dim=2)  # (B, L)
    assert changed[:, 3].all()  # every sample's token at that position moves...
    assert not changed[:, [0, 1, 2, 4, 5, 6]].any()  # ...and no other position


def test_later_point_leaves_the_plain_half():
    bf = bf2(32, depth=3, insert_after=[0, 1])
    t = torch.randn(8, 3, 32)
    out = bf.mix_tokens(1, t)
    assert out.shape == t.shape and torch.equal(out[:4], t[:4])
    torch.testing.assert_close(out[4:], reference_bf(bf.blocks[0].encoder.layers[0], t[4:]),
                               rtol=1e-4, atol=1e-5)


def test_eval_is_the_plain_vit_and_never_calls_the_module():
    net, dim = vit()
    bf = bf2(dim).eval()
    calls = []
    bf.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    x = images()
    assert torch.equal(bf(net, x), net(x))
    assert calls == []


def test_forward_with_identity_is_forward():
    net, _ = vit()
    x = images()
    assert torch.equal(net.forward_with(x, lambda i, t: t), net(x))


@pytest.mark.parametrize("points,fragment", [([4], "0..3"), ([-1], "0..3"), ([], "no block"),
                                             ([1, 1], "twice")])
def test_bad_insertion_points(points, fragment):
    with pytest.raises(ConfigError) as e:
        BatchFormerV2(192, DEPTH, insert_after=points)
    assert fragment in str(e.value) and "batchformer.insert_after" in str(e.value)


# --------------------------------------------------------------------------- in the methods
def make(name: str, version: str = "v2", bf: bool = True, **bf_kw):
    cfg = resolved(build({}, [f"method.name={name}", "model.backbone=vit_tiny"]))
    small = dict(proj_hidden_dim=32, proj_dim=16)
    small.update(queue_size=48) if name == "mocov2" else small.update(pred_hidden_dim=32)
    method = dataclasses.replace(cfg.method, **small)
    bfc = dataclasses.replace(cfg.batchformer, enabled=bf, version=version, dropout=0.0,
                              **bf_kw)
    net, dim = vit()
    return METHODS[name](net, dim, method, bfc).train()


@pytest.mark.parametrize("name", ["mocov2", "mocov3"])
def test_step_trains_the_v2_parameters(name):
    model = make(name)
    assert isinstance(model.batchformer, BatchFormerV2)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    before = {n: p.detach().clone() for n, p in model.batchformer.named_parameters()}
    loss, stats = model(images(seed=1), images(seed=2))
    assert {"loss_plain", "loss_bf"} <= set(stats) and torch.isfinite(loss)
    torch.testing.assert_close(loss.detach(), (stats["loss_plain"] + stats["loss_bf"]) / 2)
    opt.zero_grad()
    loss.backward()
    for n, p in model.batchformer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    opt.step()
    for n, p in model.batchformer.named_parameters():
        assert not torch.equal(p, before[n]), n


@pytest.mark.parametrize("name", ["mocov2", "mocov3"])
def test_queries_plain_stream_is_the_model_without_the_module(name):
    model = make(name)
    x = images()
    feats = model._features(x)
    assert feats.shape == (2 * B, 192)
    assert torch.equal(feats[:B], model.backbone(x))


def test_state_dict_names_and_no_bf_in_the_momentum_encoder():
    model = make("mocov3", shared=False, insert_after=[0, 2])
    sd = model.state_dict()
    bf_keys = [k for k in sd if "batchformer" in k]
    assert bf_keys and all(k.startswith("batchformer.blocks.") for k in bf_keys)
    assert {k.split(".")[2] for k in bf_keys} == {"0", "1"}  # one module per point
    assert not any("batchformer" in k for k in sd if "momentum" in k)
    assert not any("batchformer" in k for k in model.backbone.state_dict())
    mirror = {k.replace("momentum_", "", 1) for k in sd if "momentum" in k}
    assert mirror == {k for k in sd if k.startswith(("backbone.", "projector."))}


def test_eval_loss_ignores_the_module():
    model = make("mocov3").eval()
    v1, v2 = images(seed=3), images(seed=4)
    with torch.no_grad():
        a, stats = model(v1, v2)
        for p in model.batchformer.parameters():
            p.add_(torch.randn_like(p))
        b, _ = model(v1, v2)
    assert torch.equal(a, b) and set(stats) == {"pos_sim", "neg_sim"}


@pytest.mark.parametrize("optim", ["adamw", "lars"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_batchformer_has_its_own_optimizer_group(optim, version):
    model = make("mocov3", version=version, lr_scale=0.5, weight_decay=0.0)
    cfg = build({}, [f"optim.name={optim}", "optim.lr=0.4", "optim.weight_decay=0.1"]).optim
    opt = build_optimizer(model, cfg, global_batch=512)  # lr 0.4 x 512/256 = 0.8
    bf_ids = {id(p) for p in model.batchformer.parameters()}
    groups = {g["name"]: g for g in opt.param_groups}
    bf_groups = [g for n, g in groups.items() if n.startswith("batchformer")]
    assert {id(p) for g in bf_groups for p in g["params"]} == bf_ids
    for g in bf_groups:
        assert g["lr"] == pytest.approx(0.4) and g["weight_decay"] == 0.0
    others = [g for n, g in groups.items() if not n.startswith("batchformer")]
    assert not any(id(p) in bf_ids for g in others for p in g["params"])
    assert groups["base"]["lr"] == pytest.approx(0.8) and groups["base"]["weight_decay"] == 0.1
    assert opt.param_groups[0] is groups["base"]  # the engine logs group 0's LR
    if optim == "lars":  # BF biases and LayerNorms: no LARS adaptation, no decay
        assert groups["batchformer_bias_norm"]["lars_exclude"]
    sched = build_scheduler(opt, cfg, total_steps=10, steps_per_epoch=5)
    for _ in range(3):
        opt.step()
        sched.step()
    assert groups["batchformer"]["lr"] == pytest.approx(0.5 * groups["base"]["lr"])


def test_default_group_follows_the_optimizer():
    model = make("mocov3", version="v1")
    cfg = build({}, ["optim.weight_decay=0.05"]).optim
    groups = param_groups(model, cfg)
    assert [g["name"] for g in groups] == ["base", "batchformer"]
    assert groups[1]["lr_scale"] == 1.0 and groups[1]["weight_decay"] == 0.05


def test_export_loads_strictly_into_the_plain_vit_with_identical_outputs():
    model = make("mocov3", insert_after=[0, 2], shared=False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss, _ = model(images(seed=5), images(seed=6))
    loss.backward()
    opt.step()
    state = backbone_state_dict(model.state_dict())
    assert not any("batchformer" in k for k in state)
    tv = VisionTransformer(image_size=SIZE, patch_size=PATCH, num_layers=DEPTH, num_heads=3,
                           hidden_dim=192, mlp_dim=768)
    tv.heads = nn.Identity()
    tv.load_state_dict(state, strict=True)
    x = images(seed=7)
    with torch.no_grad():
        assert torch.equal(tv.eval()(x), model.eval().backbone(x))


def test_build_method_from_config():
    cfg = build({}, ["method.name=mocov3", "model.backbone=vit_tiny", "model.patch_size=8",
                     "model.vit_depth=3", f"data.image_size={SIZE}", "batchformer.enabled=true",
                     "batchformer.version=v2", "batchformer.insert_after=[1]",
                     "batchformer.shared=false", "method.proj_hidden_dim=32",
                     "method.pred_hidden_dim=32"])
    model = build_method(cfg)
    assert isinstance(model.batchformer, BatchFormerV2)
    assert model.batchformer.insert_after == [1] and not model.batchformer.shared
    v1 = build_method(build({}, ["model.backbone=vit_tiny", "model.patch_size=8",
                                 "model.vit_depth=1", f"data.image_size={SIZE}",
                                 "batchformer.enabled=true", "method.queue_size=64",
                                 "train.batch_size=8"]))
    assert type(v1.batchformer) is BatchFormer  # version v1 stays the default


@pytest.mark.parametrize("items,fragments", [
    (["model.backbone=resnet18"], ["batchformer.version=v2", "needs a ViT backbone",
                                   "resnet18"]),
    (["model.backbone=vit_small", "batchformer.insert_after=[12]"],
     ["batchformer.insert_after=[12]", "12 blocks", "0..11"]),
    (["model.backbone=vit_tiny", "model.vit_depth=4", "batchformer.insert_after=[0, 4]"],
     ["batchformer.insert_after=[0, 4]", "0..3"]),
])
def test_config_refuses_bad_v2(items, fragments):
    with pytest.raises(ConfigError) as e:
        resolved(build({}, ["batchformer.enabled=true", "batchformer.version=v2", *items]))
    assert all(f in str(e.value) for f in fragments), str(e.value)


def test_heads_must_divide_the_vit_width():
    with pytest.raises(ConfigError, match="batchformer.heads=5 .* 192; e.g. --set "
                                          "batchformer.heads=4"):
        make("mocov3", heads=5)


def test_v2_on_a_resnet_module_is_refused():
    cfg = build({}, ["method.name=mocov3"])
    bfc = dataclasses.replace(cfg.batchformer, enabled=True, version="v2")
    net, dim = build_backbone("resnet18", cifar_stem=True, width=4)
    with pytest.raises(ConfigError, match="needs a ViT backbone"):
        METHODS["mocov3"](net, dim, cfg.method, bfc)


@pytest.mark.parametrize("method", ["mocov2", "mocov3"])
def test_pretrain_end_to_end_logs_both_streams_and_exports_the_plain_vit(tmp_path, method):
    out = tmp_path / "run"
    cfg = tiny_config(out, method=method, bf=True, epochs=1, extra=[
        *VIT2, "batchformer.version=v2", "batchformer.lr_scale=0.5",
        "batchformer.weight_decay=0", "eval.knn_every=0"])
    trainer = Trainer(cfg)
    trainer.fit()
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert train and all(math.isfinite(r["loss_plain"]) and math.isfinite(r["loss_bf"])
                         for r in train)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["batchformer"]["weight_decay"] == 0.0
    state = load_state_dict_file(out / "backbone.pt")
    tv = VisionTransformer(image_size=SIZE, patch_size=PATCH, num_layers=2, num_heads=3,
                           hidden_dim=192, mlp_dim=768)
    tv.heads = nn.Identity()
    tv.load_state_dict(state, strict=True)
    x = images(seed=8)
    with torch.no_grad():
        assert torch.equal(tv.eval()(x), trainer.method.eval().backbone(x))
