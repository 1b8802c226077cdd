"""``model.backbone: timm/<name>``: a timm model as the backbone of MoCo-v2 / MoCo-v3, with or
without BatchFormer (v1); its facts read without building it; pretraining end to end."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers_tiny import tiny_overrides
from sslkit import config as config_mod
from sslkit.io.checkpoint import load_checkpoint
from sslkit.cli import pretrain_main
from sslkit.export import load_backbone, main as export_main
from sslkit.methods import build_method
from sslkit.models.backbones import build_backbone, feature_dim, is_vit
from sslkit.methods.resolve import resolved

timm = pytest.importorskip("timm")  # in .[dev]; the optional extra .[timm] for users
pytestmark = pytest.mark.usefixtures("one_thread")


def test_facts_without_building():
    assert feature_dim("timm/resnet18") == 512 and feature_dim("timm/resnet50") == 2048
    assert not is_vit("timm/resnet18") and is_vit("timm/vit_small_patch16_224")
    assert feature_dim("timm/vit_small_patch16_224") == 384
    net, dim = build_backbone("timm/resnet18", in_channels=1)
    assert dim == 512 and net.conv1.weight.shape == (64, 1, 7, 7)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 512)


def test_pretrain_timm_resnet18_end_to_end(tmp_path):
    """Done: model.backbone=timm/resnet18 pretrains; backbone.pt holds timm's (= torchvision's)
    ResNet names and loads strictly into timm's resnet18; load_backbone rebuilds it."""
    out = tmp_path / "run"
    items = tiny_overrides(out, epochs=1, extra=["model.backbone=timm/resnet18",
                                                 "train.max_steps=2", "eval.knn_every=0",
                                                 "run.tensorboard=false"])
    assert pretrain_main(["--set", *items]) == 0
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == 2 and ckpt["config"]["model"]["backbone"] == "timm/resnet18"
    ref = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=3)
    ref.load_state_dict(torch.load(out / "backbone.pt", weights_only=True), strict=True)
    net, _, _ = load_backbone(out)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), ref.eval()(x))
    assert export_main([str(out / "checkpoints" / "last.pt"), str(tmp_path / "t.pth"),
                        "--format", "timm"]) == 0


def _one_step(cfg: config_mod.Config) -> nn.Module:
    """build_method, one training forward/backward; the loss is finite and every trainable
    parameter of backbone and BatchFormer gets a gradient."""
    torch.manual_seed(0)
    model = build_method(cfg).train()
    s = cfg.data.image_size
    loss, _ = model(torch.randn(4, 3, s, s), torch.randn(4, 3, s, s))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in [*model.backbone.named_parameters(), *model.batchformer.named_parameters()]:
        if p.requires_grad:
            assert p.grad is not None, name
    return model


@pytest.mark.parametrize("method", ["mocov2", "mocov3"])
def test_timm_resnet_with_batchformer(tmp_path, method):
    cfg = config_mod.load(None, tiny_overrides(tmp_path, method=method, bf=True, extra=[
        "model.backbone=timm/resnet18", "train.batch_size=4", "method.bn_splits=2"]))
    model = _one_step(cfg)
    assert model.batchformer.encoder.layers[0].self_attn.embed_dim == 512


def test_timm_vit_mocov3_with_batchformer(tmp_path):
    """A timm ViT is a transformer to MoCo-v3: its ViT defaults (T 0.2, 3-layer projector)
    and a predictor ending in BN, as facebookresearch/moco-v3 builds for ViTs."""
    if not timm.is_model("test_vit"):
        pytest.skip("this timm has no test_vit model")
    cfg = resolved(config_mod.load(None, tiny_overrides(tmp_path, method="mocov3", bf=True, extra=[
        "model.backbone=timm/test_vit", "data.image_size=160", "train.batch_size=4",
        "method.temperature=null", "method.proj_layers=null"])))
    assert cfg.method.temperature == 0.2 and cfg.method.proj_layers == 3
    model = _one_step(cfg)
    assert isinstance(model.predictor[-1], nn.BatchNorm1d)
