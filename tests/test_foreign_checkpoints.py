"""Checkpoints of the field (official MoCo v1/v2, MoCo-v3 ResNet/ViT, DeiT format, timm ViT,
torchvision ResNet) read by sslkit and written for torchvision, timm and detectron2.

Every file is written in the official layout (tests/official_layouts.py) with randomised
weights and BN statistics; every comparison is of FEATURES, output for output, in eval mode.
Tolerances: torch.equal where the same module class runs the same weights (torchvision
ResNet against torchvision ResNet, timm against timm); atol 2e-5 / rtol 1e-5 between timm's
ViT and torchvision's (the same arithmetic in another order: fused attention, LayerNorm).
"""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from conftest import ROOT
from official_layouts import (moco_lincls_resnet, moco_v3_lincls_encoder, moco_v3_sincos,
                              randomise_, write_deit, write_moco_v2, write_moco_v3_resnet,
                              write_moco_v3_vit)
from sslkit import config as config_mod
from sslkit.cli import lincls_main
from sslkit.export import load_backbone, main as export_main
from sslkit.io.layouts import detectron2_key, naming, read_foreign
from sslkit.models.backbones import sincos_2d_position_embedding

timm = pytest.importorskip("timm")  # in .[dev]; the optional extra .[timm] for users

V2_RECIPE = ROOT / "configs" / "imagenet_mocov2_200ep.yaml"
V3_R50_RECIPE = ROOT / "configs" / "imagenet_mocov3_r50_100ep.yaml"
VIT_RECIPE = ROOT / "configs" / "imagenet_mocov3_vits_300ep.yaml"
ViT_TOL = dict(atol=2e-5, rtol=1e-5)


def _x(n: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _cfg(recipe, *sets: str) -> config_mod.Config:
    return config_mod.load(recipe, list(sets))


@pytest.fixture(scope="module")
def moco_v2_r50(tmp_path_factory):
    """An official MoCo-v2 ResNet-50 file (legacy torch serialization, as the 2020 release)."""
    path = tmp_path_factory.mktemp("v2") / "moco_v2_200ep_pretrain.pth.tar"
    return path, write_moco_v2(path, "resnet50", legacy=True)


# --------------------------------------------------------------------------- MoCo v1/v2
def test_moco_v2_export_loads_into_torchvision_resnet50(moco_v2_r50, tmp_path, capsys):
    """Done: the export loads strictly into torchvision's resnet50 (fc = Identity) and gives
    the features of the official main_lincls.py loading (exactly)."""
    path, model = moco_v2_r50
    reference = moco_lincls_resnet(model, "resnet50")
    out = tmp_path / "backbone.pt"
    assert export_main([str(path), str(out)]) == 0
    net = torchvision.models.resnet50()
    net.fc = nn.Identity()
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = _x()
    with torch.no_grad():
        assert torch.equal(net.eval()(x), reference(x))
        ours, mean, std = load_backbone(path, config=V2_RECIPE)
        assert torch.equal(ours(x), reference(x))
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))
    assert "note:" not in capsys.readouterr().out


@pytest.mark.parametrize("mlp,prefix", [(False, True), (True, False)])
def test_moco_v1_and_unprefixed_files(tmp_path, mlp, prefix):
    """MoCo v1 (fc a single Linear) and a file without DDP's module. prefix."""
    path = tmp_path / "moco.pth.tar"
    model = write_moco_v2(path, "resnet18", mlp=mlp, prefix=prefix, seed=3)
    bb = read_foreign(torch.load(path, weights_only=True), str(path))
    assert bb.layout == "moco" and naming(bb.state) == "resnet"
    assert not any(k.startswith("fc.") for k in bb.state)
    net, _, _ = load_backbone(path, config=_cfg(V2_RECIPE, "model.backbone=resnet18"))
    x = _x(size=32)
    with torch.no_grad():
        assert torch.equal(net(x), moco_lincls_resnet(model, "resnet18")(x))


def test_detectron2_export_follows_the_official_converter(moco_v2_r50, tmp_path):
    """--format detectron2 writes what facebookresearch/moco's
    detection/convert-pretrain-to-detectron2.py writes, less its stem.fc.* head copy: the
    expected names come from that script's rules, applied here as plain string replaces."""
    path, model = moco_v2_r50
    out = tmp_path / "r50.pkl"
    assert export_main([str(path), str(out), "--format", "detectron2"]) == 0
    with open(out, "rb") as fh:
        d2 = pickle.load(fh, encoding="latin1")  # as detectron2 reads it
    assert d2["matching_heuristics"] is True and isinstance(d2["__author__"], str)
    assert b"numpy._core" not in out.read_bytes()  # loads under numpy 1.x as well
    expected = {}
    for k, v in model.state_dict().items():
        if not k.startswith("encoder_q.") or k.startswith("encoder_q.fc"):
            continue
        k = k[len("encoder_q."):]
        if "layer" not in k:
            k = "stem." + k
        for t in (1, 2, 3, 4):
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        expected[k] = v.numpy()
    assert set(d2["model"]) == set(expected)
    for k, v in expected.items():
        assert isinstance(d2["model"][k], np.ndarray) and d2["model"][k].dtype == v.dtype, k
        assert np.array_equal(d2["model"][k], v) and d2["model"][k].shape == v.shape, k
        assert d2["model"][k].flags.writeable, k
    assert detectron2_key("layer3.5.downsample.1.running_var") == "res4.5.shortcut.norm.running_var"


# --------------------------------------------------------------------------- MoCo-v3
def test_moco_v3_resnet_features(tmp_path):
    path = tmp_path / "r-50-100ep.pth.tar"
    model = write_moco_v3_resnet(path, "resnet18", seed=5)
    bb = read_foreign(torch.load(path, weights_only=True), str(path))
    assert bb.layout == "moco-v3" and not any(k.startswith("fc.") for k in bb.state)
    net, _, _ = load_backbone(path, config=_cfg(V3_R50_RECIPE, "model.backbone=resnet18"))
    x = _x(size=32)
    with torch.no_grad():
        assert torch.equal(net(x), moco_v3_lincls_encoder(model)(x))


def test_moco_v3_vit_s_through_sslkit_to_timm(tmp_path, capsys):
    """Done: an official MoCo-v3 ViT-S (384 wide, 12 blocks, 12 heads; base and momentum
    encoders, projector, predictor) read by sslkit gives the original's features; exported
    (sslkit's names, then --format timm) it loads strictly into timm's VisionTransformer and
    gives them exactly."""
    path = tmp_path / "vit-s-300ep.pth.tar"
    model = write_moco_v3_vit(path)
    original = moco_v3_lincls_encoder(model)
    x = _x(size=32)
    cfg = _cfg(VIT_RECIPE, "data.image_size=32")
    with torch.no_grad():
        ref = original(x)
        ours, _, _ = load_backbone(path, config=cfg)
        torch.testing.assert_close(ours(x), ref, **ViT_TOL)
    assert "note:" not in capsys.readouterr().out  # MoCo-v3's embedding is the sin-cos one
    sslkit_pt, timm_pt = tmp_path / "vit_s.pt", tmp_path / "vit_s_timm.pth"
    assert export_main([str(path), str(sslkit_pt)]) == 0
    assert export_main([str(sslkit_pt), str(timm_pt), "--format", "timm"]) == 0
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=384, depth=12, num_heads=12,
                            num_classes=0)
    vit.load_state_dict(torch.load(timm_pt, weights_only=True), strict=True)
    direct = tmp_path / "direct_timm.pth"
    assert export_main([str(path), str(direct), "--format", "timm"]) == 0
    with torch.no_grad():
        assert torch.equal(vit.eval()(x), ref)
        vit.load_state_dict(torch.load(direct, weights_only=True), strict=True)
        assert torch.equal(vit(x), ref)
    # DeiT format (convert_to_deit.py's output) of the same model: the same features
    deit = tmp_path / "deit.pth"
    write_deit(deit, model)
    with torch.no_grad():
        torch.testing.assert_close(load_backbone(deit, config=cfg)[0](x), ref, **ViT_TOL)


def test_sincos_matches_moco_v3_definition():
    for grid, dim in ((14, 384), (2, 48)):
        torch.testing.assert_close(sincos_2d_position_embedding(grid, dim),
                                   moco_v3_sincos(grid, dim), atol=1e-5, rtol=0)


def test_timm_vit_with_learned_position_embedding(tmp_path, capsys):
    """A plain timm ViT state dict with a learned (random) position embedding and a
    classifier head: sslkit says so in one line, loads the file's embedding (not its own
    sin-cos), drops the head, and gives timm's features; --format torchvision loads strictly
    into torchvision's VisionTransformer."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = randomise_(VisionTransformer(img_size=16, patch_size=8, embed_dim=192, depth=2,
                                       num_heads=3, num_classes=10), seed=7).eval()
    path = tmp_path / "deit_tiny.pth"
    torch.save(vit.state_dict(), path)
    vit.reset_classifier(0)
    x = _x(3, 16)
    cfg = config_mod.build({}, ["model.backbone=vit_tiny", "model.vit_depth=2",
                                "model.patch_size=8", "data.image_size=16"])
    with torch.no_grad():
        ref = vit(x)
        ours, _, _ = load_backbone(path, config=cfg)
        torch.testing.assert_close(ours(x), ref, **ViT_TOL)
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "learned position embedding" in notes[0]
    assert torch.equal(ours.encoder.pos_embedding, vit.pos_embed)
    out = tmp_path / "tv.pt"
    assert export_main([str(path), str(out)]) == 0
    tv = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2,
                                              num_heads=3, hidden_dim=192, mlp_dim=768)
    tv.heads = nn.Identity()
    tv.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(tv.eval()(x), ref, **ViT_TOL)


# --------------------------------------------------------------------------- torchvision / timm
def test_torchvision_resnet_state_dict_drops_the_classifier(tmp_path):
    net = randomise_(torchvision.models.resnet18(), seed=11).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    ours, _, _ = load_backbone(path, config=_cfg(V2_RECIPE, "model.backbone=resnet18"))
    net.fc = nn.Identity()
    x = _x(size=32)
    with torch.no_grad():
        assert torch.equal(ours(x), net(x))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_timm_resnet_names_are_torchvisions(arch):
    """The README's claim: a torchvision ResNet's state dict (fc = Identity) loads strictly
    into timm's ResNet of the same name (num_classes=0) and gives the same features."""
    tv = getattr(torchvision.models, arch)()
    tv.fc = nn.Identity()
    randomise_(tv, seed=2).eval()
    tm = timm.create_model(arch, pretrained=False, num_classes=0)
    tm.load_state_dict(tv.state_dict(), strict=True)
    x = _x(size=64)
    with torch.no_grad():
        torch.testing.assert_close(tm.eval()(x), tv(x), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- run_lincls
def test_run_lincls_on_an_official_file_end_to_end(tmp_path):
    """Done: run_lincls.py --checkpoint <official MoCo-v2 file> --config <recipe> on small data
    (synthetic 16 px images; a ResNet-18 in the official layout). eval.json goes beside the
    file, in <name>_lincls/, and nothing else on disk changes."""
    path = tmp_path / "moco_v2_r18.pth.tar"
    write_moco_v2(path, "resnet18", seed=4)
    before = path.read_bytes()
    sets = ["model.backbone=resnet18", "run.device=cpu", "run.precision=fp32",
            "run.progress=false", "data.name=synthetic", "data.image_size=16",
            "data.synthetic_train=64", "data.synthetic_test=32", "data.synthetic_classes=4",
            "data.num_workers=0", "eval.mode=cached", "eval.epochs=2", "eval.batch_size=32",
            "eval.knn_k=5", "eval.knn_ks=[5]", "eval.knn_ts=[0.1]", "eval.lr_grid=[0.1]",
            "eval.wd_grid=[0.0]", "eval.embedding_samples=0", "run.tensorboard=false"]
    assert lincls_main(["--checkpoint", str(path), "--config", str(V2_RECIPE),
                        "--set", *sets]) == 0
    result = json.loads((tmp_path / "moco_v2_r18_lincls" / "eval.json").read_text())
    assert 0 <= result["linear_top1"] <= 100 and 0 <= result["knn_top1"] <= 100
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moco_v2_r18.pth.tar",
                                                           "moco_v2_r18_lincls"]


@pytest.mark.parametrize("obj", [{"state_dict": {"module.mystery.w": torch.zeros(2)}},
                                 {"mystery.w": torch.zeros(2)}])
def test_export_of_a_file_in_no_layout_names_the_layouts_it_reads(tmp_path, capsys, obj):
    """A wrapped or bare state dict of no model sslkit knows (and no timm run saying what it
    is) is not sent to --format timm: the one line names the layouts sslkit reads."""
    src = tmp_path / "mystery.pth"
    torch.save(obj, src)
    out = tmp_path / "out.pt"
    assert export_main([str(src), str(out)]) == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "no checkpoint layout" in err
    assert "facebookresearch/moco v1/v2" in err and "--format timm" not in err
