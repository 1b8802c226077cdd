"""Backbones: feature shapes, torchvision key names (strict load), ViT position embedding."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from sslkit import config as config_mod
from sslkit.errors import ConfigError
from sslkit.models.backbones import (BACKBONES, backbone_from_config, build_backbone,
                                     sincos_2d_position_embedding)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name,expansion", [("resnet18", 1), ("resnet34", 1), ("resnet50", 4)])
def test_resnet_dims(name, expansion):
    net, dim = build_backbone(name, cifar_stem=True, width=8)
    assert dim == 8 * 8 * expansion
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, dim)
    assert isinstance(net.fc, nn.Identity) and isinstance(net.maxpool, nn.Identity)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)


def test_resnet18_width16_is_128d_and_one_channel():
    net, dim = build_backbone("resnet18", in_channels=1, cifar_stem=True, width=16)
    assert dim == 128 and net(torch.randn(3, 1, 28, 28)).shape == (3, 128)
    assert net.conv1.in_channels == 1


def _torchvision_resnet(name: str, cifar_stem: bool) -> nn.Module:
    tv = getattr(torchvision.models, name)()
    tv.fc = nn.Identity()
    if cifar_stem:
        tv.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        tv.maxpool = nn.Identity()
    return tv


@pytest.mark.parametrize("name,cifar_stem", [("resnet18", False), ("resnet18", True), ("resnet50", False)])
def test_resnet_loads_strictly_into_torchvision(name, cifar_stem):
    net, dim = build_backbone(name, cifar_stem=cifar_stem)
    tv = _torchvision_resnet(name, cifar_stem)
    ours = net.state_dict()
    assert set(ours) == set(tv.state_dict())  # every torchvision key, no fc.*, nothing extra
    assert not any(k.startswith("fc.") for k in ours)
    tv.load_state_dict(ours, strict=True)
    net.eval(), tv.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), tv(x), atol=1e-5)
    assert dim == (2048 if name == "resnet50" else 512)


def test_resnet_init_and_zero_init_residual():
    net, _ = build_backbone("resnet18", zero_init_residual=True, width=8)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0
               for layer in (net.layer1, net.layer4) for b in layer)
    net50, _ = build_backbone("resnet50", zero_init_residual=True, width=8)
    assert float(net50.layer2[0].bn3.weight.detach().abs().sum()) == 0
    plain, _ = build_backbone("resnet18", width=8)
    assert float(plain.layer1[0].bn2.weight.detach().min()) == 1.0
    # Kaiming normal, fan_out, ReLU: std = sqrt(2 / (out_channels * k * k))
    w = plain.layer4[0].conv1.weight.detach()
    assert w.std().item() == pytest.approx(math.sqrt(2 / (w.shape[0] * 9)), rel=0.1)


@pytest.mark.parametrize("name,dim", [("vit_tiny", 192), ("vit_small", 384), ("vit_base", 768)])
def test_vit_dims(name, dim):
    net, d = build_backbone(name, image_size=32, patch_size=16, depth=1)
    assert d == dim and net(torch.randn(2, 3, 32, 32)).shape == (2, dim)
    assert len(net.encoder.layers) == 1 and isinstance(net.heads, nn.Identity)


def test_vit_default_depth_and_heads():
    # MoCo-v3 vits.py: vit_small = embed_dim 384, depth 12, num_heads 12 (DeiT-S has 6)
    net, _ = build_backbone("vit_small", image_size=32, patch_size=16)
    attn = net.encoder.layers[0].self_attention
    assert len(net.encoder.layers) == 12 and attn.num_heads == 12 and attn.embed_dim == 384
    base, _ = build_backbone("vit_base", image_size=32, patch_size=16, depth=1)
    attn = base.encoder.layers[0].self_attention
    assert attn.num_heads == 12 and attn.embed_dim == 768
    tiny, _ = build_backbone("vit_tiny", image_size=32, patch_size=16, depth=2)
    assert tiny.encoder.layers[0].self_attention.num_heads == 3


def test_vit_position_embedding_fixed_sincos():
    net, dim = build_backbone("vit_tiny", image_size=32, patch_size=8, depth=1)
    pe = net.encoder.pos_embedding
    assert not pe.requires_grad and pe.shape == (1, 1 + 16, 192)
    assert torch.equal(pe[0, 0], torch.zeros(192))  # class token: zero
    d, grid = dim // 4, 4
    r, c = 2, 3  # patch at row 2, column 3 -> sequence position 1 + 2*4 + 3
    row = pe[0, 1 + r * grid + c]
    for i in (0, 5, d - 1):
        omega = 10000.0 ** (-i / d)
        assert row[i].item() == pytest.approx(math.sin(r * omega), abs=1e-6)
        assert row[d + i].item() == pytest.approx(math.cos(r * omega), abs=1e-6)
        assert row[2 * d + i].item() == pytest.approx(math.sin(c * omega), abs=1e-6)
        assert row[3 * d + i].item() == pytest.approx(math.cos(c * omega), abs=1e-6)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    assert pe.grad is None
    assert torch.equal(sincos_2d_position_embedding(4, 192), pe.detach())


def test_vit_patch_projection_frozen_when_asked():
    frozen, _ = build_backbone("vit_tiny", image_size=32, patch_size=8, depth=1, freeze_patch_embed=True)
    assert not frozen.conv_proj.weight.requires_grad and not frozen.conv_proj.bias.requires_grad
    frozen(torch.randn(2, 3, 32, 32)).sum().backward()
    assert frozen.conv_proj.weight.grad is None and frozen.class_token.grad is not None
    free, _ = build_backbone("vit_tiny", image_size=32, patch_size=8, depth=1)
    assert free.conv_proj.weight.requires_grad
    # MoCo-v3 init of the patch projection: U(-a, a), a = sqrt(6 / (3 p^2 + D))
    a = math.sqrt(6 / (3 * 64 + 192))
    assert float(free.conv_proj.weight.detach().abs().max()) <= a


def test_vit_loads_strictly_into_torchvision_and_one_channel():
    net, _ = build_backbone("vit_tiny", image_size=32, patch_size=8, depth=2)
    tv = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=3,
                           hidden_dim=192, mlp_dim=768)
    tv.heads = nn.Identity()
    assert set(net.state_dict()) == set(tv.state_dict())
    tv.load_state_dict(net.state_dict(), strict=True)
    net.eval(), tv.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), tv(x), atol=1e-5)
    one, d = build_backbone("vit_small", in_channels=1, image_size=28, patch_size=7, depth=1)
    assert one(torch.randn(2, 1, 28, 28)).shape == (2, d) and one.conv_proj.in_channels == 1


def test_errors_and_registry():
    assert set(BACKBONES) == {"resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small", "vit_base"}
    assert set(BACKBONES) == set(config_mod.schema.BUILTIN_BACKBONES)  # the config's list
    with pytest.raises(ConfigError, match="unknown backbone 'resnet101'.*resnet18.*vit_base"):
        build_backbone("resnet101")
    with pytest.raises(ConfigError, match="not divisible"):
        build_backbone("vit_small", image_size=30, patch_size=16)


def test_backbone_from_config():
    cfg = config_mod.build({"data": {"channels": 1, "image_size": 28},
                            "model": {"backbone": "resnet18", "cifar_stem": True, "width": 16}})
    net, dim = backbone_from_config(cfg)
    assert dim == 128 and net(torch.randn(2, 1, 28, 28)).shape == (2, 128)
    cfg = config_mod.build({"data": {"image_size": 32},
                            "model": {"backbone": "vit_tiny", "patch_size": 8, "vit_depth": 1}})
    vit, dim = backbone_from_config(cfg)
    assert dim == 192 and not vit.conv_proj.weight.requires_grad  # freeze_patch_embed default
