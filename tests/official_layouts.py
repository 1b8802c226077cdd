"""Checkpoints written in the layouts of the field's code, for the foreign-checkpoint tests.

Each writer builds a module with the structure and key names the official code saves
(written here from the layouts, not copied: facebookresearch/moco ``main_moco.py`` /
``moco/builder.py``; facebookresearch/moco-v3 ``main_moco.py``, ``moco/builder.py``,
``vits.py``, ``convert_to_deit.py``), randomises every weight and every BatchNorm running
statistic (defaults - zero biases, unit variances - would hide a mapping error), saves it as
those scripts do and returns the module, so a test can compute the features the official
loading gives.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import nn


def randomise_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter and BN buffer, of a scale that keeps a deep network's
    activations finite: norm weights U(0.5, 1.5), biases N(0, 0.1), BN running mean N(0, 0.1)
    and variance U(0.5, 2), class tokens / position embeddings N(0, 0.5); conv and linear
    weights keep their (random) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif p.dim() == 1:  # norm weights
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif leaf in ("cls_token", "pos_embed"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=g)))
    return module


def _mlp(layers: int, d_in: int, hidden: int, d_out: int, last_bn: bool = True) -> nn.Sequential:
    """MoCo-v3's MLP layout: Linear (no bias) - BN - ReLU per hidden layer, a last Linear,
    then BN without affine parameters when ``last_bn``."""
    mods: list[nn.Module] = []
    for i in range(layers):
        a, b = d_in if i == 0 else hidden, d_out if i == layers - 1 else hidden
        mods.append(nn.Linear(a, b, bias=False))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*mods)


def _save(obj: dict, path: Path, legacy: bool) -> None:
    # the 2020 files predate torch's zip format: legacy=True writes the old one
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


def _ddp(state: dict, prefix: bool) -> dict:
    return {("module." if prefix else "") + k: v for k, v in state.items()}


# --------------------------------------------------------------------------- MoCo v1/v2
class MoCoV2Layout(nn.Module):
    """facebookresearch/moco's MoCo module: encoder_q / encoder_k are torchvision ResNets whose
    ``fc`` is the head (v2: Linear(D, D) - ReLU - Linear(D, dim); v1: Linear(D, dim)), the
    queue a (dim, K) buffer and its pointer."""

    def __init__(self, arch: str = "resnet50", dim: int = 128, K: int = 256, mlp: bool = True):
        super().__init__()
        encoders = []
        for _ in range(2):
            net = getattr(torchvision.models, arch)(num_classes=dim)
            if mlp:
                d = net.fc.weight.shape[1]
                net.fc = nn.Sequential(nn.Linear(d, d), nn.ReLU(), net.fc)
            encoders.append(net)
        self.encoder_q, self.encoder_k = encoders
        self.register_buffer("queue", nn.functional.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))


def write_moco_v2(path: Path, arch: str = "resnet50", mlp: bool = True, prefix: bool = True,
                  legacy: bool = False, seed: int = 0) -> MoCoV2Layout:
    """``main_moco.py``'s file: {'epoch', 'arch', 'state_dict', 'optimizer'}."""
    torch.manual_seed(seed)
    model = randomise_(MoCoV2Layout(arch, mlp=mlp), seed)
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.03, momentum=0.9,
                          weight_decay=1e-4)
    _save({"epoch": 200, "arch": arch, "state_dict": _ddp(model.state_dict(), prefix),
           "optimizer": opt.state_dict()}, path, legacy)
    return model.eval()


def moco_lincls_resnet(model: MoCoV2Layout, arch: str) -> nn.Module:
    """What facebookresearch/moco ``main_lincls.py`` builds from the file: the torchvision
    ResNet with encoder_q's weights except its head (``strict=False``, only fc.weight /
    fc.bias missing), here with ``fc = Identity`` to give the features."""
    state = {k[len("module.encoder_q."):]: v for k, v in
             _ddp(model.state_dict(), True).items()
             if k.startswith("module.encoder_q") and not k.startswith("module.encoder_q.fc")}
    net = getattr(torchvision.models, arch)()
    missing = net.load_state_dict(state, strict=False).missing_keys
    assert set(missing) == {"fc.weight", "fc.bias"}
    net.fc = nn.Identity()
    return net.eval()


# --------------------------------------------------------------------------- MoCo-v3
class MoCoV3Layout(nn.Module):
    """facebookresearch/moco-v3's MoCo module: base_encoder and momentum_encoder (their
    ``fc`` for a ResNet / ``head`` for a ViT is the projector) and the predictor."""

    def __init__(self, make_encoder, head: str, feat: int, dim: int, mlp_dim: int, vit: bool):
        super().__init__()
        self.base_encoder, self.momentum_encoder = make_encoder(), make_encoder()
        for enc in (self.base_encoder, self.momentum_encoder):
            setattr(enc, head, _mlp(3 if vit else 2, feat, mlp_dim, dim))
        self.predictor = _mlp(2, dim, mlp_dim, dim, last_bn=vit)


def moco_v3_sincos(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """vits.py's ``build_2d_sincos_position_embedding`` by its definition: meshgrid of the
    (w, h) index vectors in 'ij' order, omega = 1 / T^(i / (dim/4)), [sin, cos] of the first
    grid's products then of the second's, a zero class-token row; (1, 1 + grid^2, dim)."""
    idx = torch.arange(grid, dtype=torch.float32)
    first, second = torch.meshgrid(idx, idx, indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    a = first.flatten()[:, None] * omega[None]
    b = second.flatten()[:, None] * omega[None]
    pe = torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), pe])[None]


def write_moco_v3_resnet(path: Path, arch: str = "resnet18", dim: int = 16, mlp_dim: int = 32,
                         seed: int = 0) -> MoCoV3Layout:
    """``main_moco.py``'s file for a ResNet: {'epoch', 'arch', 'state_dict', 'optimizer',
    'scaler'}."""
    torch.manual_seed(seed)
    make = partial(getattr(torchvision.models, arch), zero_init_residual=True,
                   num_classes=mlp_dim)
    feat = make().fc.weight.shape[1]
    model = randomise_(MoCoV3Layout(make, "fc", feat, dim, mlp_dim, vit=False), seed)
    _write_v3(path, arch, model)
    return model.eval()


def write_moco_v3_vit(path: Path, img: int = 32, patch: int = 16, embed: int = 384,
                      depth: int = 12, heads: int = 12, dim: int = 16, mlp_dim: int = 32,
                      seed: int = 0) -> MoCoV3Layout:
    """``main_moco.py``'s file for ``vits.py``'s ViT (timm's VisionTransformer, qkv bias,
    LayerNorm eps 1e-6, fixed sin-cos position embedding with a zero class row). Defaults:
    vit_small (384 wide, 12 blocks, 12 heads) on 32 px images."""
    from timm.models.vision_transformer import VisionTransformer  # test extra: timm

    torch.manual_seed(seed)
    make = partial(VisionTransformer, img_size=img, patch_size=patch, embed_dim=embed,
                   depth=depth, num_heads=heads, mlp_ratio=4, qkv_bias=True,
                   norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=mlp_dim)
    model = randomise_(MoCoV3Layout(make, "head", embed, dim, mlp_dim, vit=True), seed)
    with torch.no_grad():
        for enc in (model.base_encoder, model.momentum_encoder):
            enc.pos_embed.copy_(moco_v3_sincos(img // patch, embed))
            enc.pos_embed.requires_grad_(False)
    _write_v3(path, "vit_small", model)
    return model.eval()


def _write_v3(path: Path, arch: str, model: MoCoV3Layout) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
              "growth_interval": 2000, "_growth_tracker": 17}
    _save({"epoch": 100, "arch": arch, "state_dict": _ddp(model.state_dict(), True),
           "optimizer": opt.state_dict(), "scaler": scaler}, path, legacy=False)


def moco_v3_lincls_encoder(model: MoCoV3Layout) -> nn.Module:
    """What moco-v3 ``main_lincls.py`` loads: base_encoder without its fc / head (here the
    same module with the head replaced by Identity, so it returns the features)."""
    import copy

    enc = copy.deepcopy(model.base_encoder)
    setattr(enc, "head" if hasattr(enc, "cls_token") else "fc", nn.Identity())
    return enc.eval()


def write_deit(path: Path, model: MoCoV3Layout) -> None:
    """moco-v3 ``convert_to_deit.py``'s output: {'model': base_encoder's keys minus head}."""
    state = {k[len("base_encoder."):]: v for k, v in model.state_dict().items()
             if k.startswith("base_encoder.") and not k.startswith("base_encoder.head")}
    torch.save({"model": state}, path)
