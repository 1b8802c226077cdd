"""Backbones: torchvision ResNets and ViTs without their classifier.

``build_backbone(name, **kw) -> (module, feat_dim)``; ``module(x)`` maps images
``(B, C, H, W)`` to features ``(B, feat_dim)``. State-dict key names are torchvision's, so an
exported backbone loads into ``torchvision.models.resnet18()`` (same stem, ``fc`` replaced by
``nn.Identity``) or the matching ``VisionTransformer`` (``heads`` replaced) with
``strict=True``; every parameter and buffer of that torchvision model is kept.

* ResNet-18/34/50 (``torchvision.models.resnet.ResNet`` with BasicBlock / Bottleneck):
  ``cifar_stem`` = conv1 3x3 stride 1 padding 1 and no max-pool (for 28-32 px images);
  ``maxpool`` keeps (True) or drops (False) the stem's 3x3 stride-2 max-pool (default: kept
  unless ``cifar_stem``; it has no weights, so exports load either way);
  ``width`` = the base width w (64 = torchvision): stage widths w, 2w, 4w, 8w, so
  ``feat_dim = 8 w * expansion`` (ResNet-18 at w=16: 128-d); ``zero_init_residual`` zeroes
  the last BN weight of each residual branch.
* ViT-Tiny/Small/Base (``torchvision.models.VisionTransformer``, width/depth/heads 192/12/3,
  384/12/12 as MoCo-v3's ViT-S, 768/12/12; class-token output,
  ``feat_dim`` = hidden dim) with MoCo-v3's choices: fixed 2-D sin-cos position embedding
  (not trainable, zero for the class token), optionally frozen random patch projection,
  MoCo-v3's initialisation; ``patch_size`` and ``depth`` options. Options of one family
  (ResNet: cifar_stem, width, zero_init_residual; ViT: image_size, patch_size, depth,
  freeze_patch_embed) are ignored by the other.
* ``timm/<name>`` (the optional extra ``pip install -e '.[timm]'``): any timm model, built
  with ``timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)``,
  its feature dimension timm's ``num_features``; timm's key names (which for ResNets are
  torchvision's). The options above do not apply to it.
"""
from __future__ import annotations

import difflib
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.vision_transformer import VisionTransformer

from sslkit.config.schema import TIMM_PREFIX
from sslkit.errors import ConfigError


# --------------------------------------------------------------------------- ResNet
def default_maxpool(cifar_stem: bool) -> bool:
    """The ResNet stem keeps torchvision's 3x3 stride-2 max-pool unless it is the CIFAR stem."""
    return not cifar_stem


class ResNetBackbone(ResNet):
    """torchvision's ResNet at base width ``width`` with ``fc = nn.Identity()``.

    Built attribute by attribute (torchvision's constructor fixes the width at 64), with the
    same names and the same initialisation: conv weights Kaiming-normal (fan_out, ReLU), BN
    weight 1 and bias 0. ``forward`` is torchvision's: conv1-bn1-relu-maxpool, layer1..4,
    global average pool, flatten -> (B, 8 * width * expansion).
    """

    def __init__(self, block: type, layers: list[int], *, width: int = 64, in_channels: int = 3,
                 cifar_stem: bool = False, zero_init_residual: bool = False,
                 maxpool: Optional[bool] = None):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        pool = default_maxpool(cifar_stem) if maxpool is None else maxpool
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if pool else nn.Identity()
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.feat_dim = 8 * width * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)


def _resnet(block: type, layers: list[int]) -> Callable[..., tuple[nn.Module, int]]:
    def build(*, in_channels: int = 3, cifar_stem: bool = False, width: int = 64,
              zero_init_residual: bool = False, maxpool: Optional[bool] = None,
              **_: Any) -> tuple[nn.Module, int]:
        if width < 1:
            raise ConfigError(f"model.width={width} is invalid: must be >= 1")
        net = ResNetBackbone(block, layers, width=width, in_channels=in_channels,
                             cifar_stem=cifar_stem, zero_init_residual=zero_init_residual,
                             maxpool=maxpool)
        return net, net.feat_dim
    return build


# --------------------------------------------------------------------------- ViT
def sincos_2d_position_embedding(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MoCo-v3's fixed 2-D sin-cos embedding with a zero class-token row: (1, 1 + grid^2, dim).

    For the patch at row ``r``, column ``c`` (row-major order, as the patch sequence), with
    ``d = dim / 4`` and ``omega_i = temperature^(-i / d)`` for ``i = 0..d-1``:
    ``[sin(r omega), cos(r omega), sin(c omega), cos(c omega)]`` (MoCo-v3's ``grid_w`` half
    comes first and, through its ``meshgrid`` call, holds the row index).
    """
    if dim % 4:
        raise ConfigError(f"the sin-cos position embedding needs a hidden dim divisible by 4, got {dim}")
    d = dim // 4
    omega = 1.0 / temperature ** (torch.arange(d, dtype=torch.float64) / d)
    rows = torch.arange(grid, dtype=torch.float64).repeat_interleave(grid)  # r of patch r*grid+c
    cols = torch.arange(grid, dtype=torch.float64).repeat(grid)
    out_r, out_c = rows[:, None] * omega[None], cols[:, None] * omega[None]
    pe = torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), pe]).float().unsqueeze(0)


class ViTBackbone(VisionTransformer):
    """torchvision's VisionTransformer returning the class token (B, hidden_dim).

    ``heads = nn.Identity()``; ``encoder.pos_embedding`` holds the fixed sin-cos embedding
    with ``requires_grad=False``; ``conv_proj`` takes ``in_channels`` and is frozen when
    ``freeze_patch_embed``. Initialisation as MoCo-v3: patch projection
    ``U(-a, a)``, ``a = sqrt(6 / (C p^2 + D))``; q/k/v each Xavier-uniform as separate
    (D, D) matrices; other linear layers Xavier-uniform with zero bias; class token
    ``N(0, 1e-6^2)``.
    """

    def __init__(self, *, image_size: int, patch_size: int, depth: int, heads: int, dim: int,
                 in_channels: int = 3, freeze_patch_embed: bool = False):
        super().__init__(image_size=image_size, patch_size=patch_size, num_layers=depth,
                         num_heads=heads, hidden_dim=dim, mlp_dim=4 * dim)
        self.heads = nn.Identity()
        self.conv_proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.feat_dim = dim
        with torch.no_grad():
            self.encoder.pos_embedding.copy_(sincos_2d_position_embedding(image_size // patch_size, dim))
        self.encoder.pos_embedding.requires_grad_(False)
        for name, m in self.named_modules():
            if isinstance(m, nn.MultiheadAttention):
                a = math.sqrt(6.0 / (2 * dim))  # q, k, v: (D, D) each
                nn.init.uniform_(m.in_proj_weight, -a, a)
                nn.init.zeros_(m.in_proj_bias)
                nn.init.xavier_uniform_(m.out_proj.weight)
                nn.init.zeros_(m.out_proj.bias)
            elif isinstance(m, nn.Linear) and "self_attention" not in name:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        a = math.sqrt(6.0 / (in_channels * patch_size * patch_size + dim))
        nn.init.uniform_(self.conv_proj.weight, -a, a)
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.normal_(self.class_token, std=1e-6)
        if freeze_patch_embed:
            self.conv_proj.weight.requires_grad_(False)
            self.conv_proj.bias.requires_grad_(False)

    def forward_with(self, x: torch.Tensor,
                     after_block: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """torchvision's ``forward`` with ``after_block(i, tokens)`` applied to the tokens
        (N, L, D) that block ``i`` (0-based) outputs; it may change N (BatchFormerV2 doubles
        it), every later block then runs on its rows. With ``after_block`` returning the
        tokens unchanged this is ``forward(x)`` bit for bit."""
        x = self._process_input(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        enc = self.encoder
        x = enc.dropout(x + enc.pos_embedding)
        for i, block in enumerate(enc.layers):
            x = after_block(i, block(x))
        return self.heads(enc.ln(x)[:, 0])


def _vit(dim: int, layers: int, heads: int) -> Callable[..., tuple[nn.Module, int]]:
    def build(*, in_channels: int = 3, image_size: int = 224, patch_size: int = 16,
              depth: Optional[int] = None, freeze_patch_embed: bool = False,
              **_: Any) -> tuple[nn.Module, int]:
        if patch_size < 1 or image_size % patch_size:
            raise ConfigError(f"ViT: data.image_size={image_size} is not divisible by "
                              f"model.patch_size={patch_size}; choose a patch size that divides it")
        net = ViTBackbone(image_size=image_size, patch_size=patch_size,
                          depth=depth if depth is not None else layers, heads=heads,
                          dim=dim, in_channels=in_channels, freeze_patch_embed=freeze_patch_embed)
        return net, dim
    return build


# --------------------------------------------------------------------------- timm

def is_timm(name: str) -> bool:
    """Whether ``name`` (``model.backbone``) is a timm model, ``timm/<name>``."""
    return name.startswith(TIMM_PREFIX)


def _timm_model(name: str) -> tuple[Any, str]:
    """(the timm module, the model name) for ``timm/<model>``, or a one-line ConfigError
    when timm is missing or has no such model."""
    try:
        import timm  # the optional extra: imported only when a timm/<name> backbone is used
    except ImportError:
        raise ConfigError(f"model.backbone={name} needs the optional package timm: "
                          f"pip install -e '.[timm]'") from None
    model = name[len(TIMM_PREFIX):]
    if not model or not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=1)
        hint = f"; did you mean 'timm/{close[0]}'?" if close else "; see timm.list_models()"
        raise ConfigError(f"model.backbone={name}: timm has no model '{model}'{hint}")
    return timm, model


def _timm_build(name: str) -> Callable[..., tuple[nn.Module, int]]:
    def build(*, in_channels: int = 3, **_: Any) -> tuple[nn.Module, int]:
        timm, model = _timm_model(name)
        net = timm.create_model(model, pretrained=False, num_classes=0, in_chans=in_channels)
        return net, int(net.num_features)
    return build


def _timm_arch(name: str) -> "Arch":
    """The registry entry of ``timm/<model>`` (timm and the model checked on every call)."""
    _timm_model(name)
    return _timm_facts(name)


@functools.lru_cache(maxsize=None)
def _timm_facts(name: str) -> "Arch":
    """Built once on the meta device (no memory, no initialisation) to read
    ``num_features`` and whether it is a transformer (it has a ``patch_embed``)."""
    timm, model = _timm_model(name)
    try:
        with torch.device("meta"):
            net = timm.create_model(model, pretrained=False, num_classes=0)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        net = timm.create_model(model, pretrained=False, num_classes=0)  # a model that
        # computes tensors' values while it is built cannot be built on the meta device
    return Arch(_timm_build(name), "vit" if hasattr(net, "patch_embed") else "cnn",
                dim=int(net.num_features), timm=True)


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Arch:
    """One entry of the registry: its builder and the facts the rest of sslkit asks of the
    model without building it (the feature width, a ViT's default depth)."""

    build: Callable[..., tuple[nn.Module, int]]
    family: str                 # "resnet" or "vit" ("cnn" or "vit" for timm models)
    expansion: int = 1          # ResNet: channels of a block's output per base-width channel
    dim: int = 0                # ViT: hidden width; timm: num_features
    depth: int = 0              # ViT: default number of blocks (model.vit_depth overrides)
    timm: bool = False          # a timm/<name> model (sslkit's model options do not apply)


ARCHS: dict[str, Arch] = {
    "resnet18": Arch(_resnet(BasicBlock, [2, 2, 2, 2]), "resnet", expansion=1),
    "resnet34": Arch(_resnet(BasicBlock, [3, 4, 6, 3]), "resnet", expansion=1),
    "resnet50": Arch(_resnet(Bottleneck, [3, 4, 6, 3]), "resnet", expansion=4),
    "vit_tiny": Arch(_vit(192, 12, 3), "vit", dim=192, depth=12),  # DeiT-Ti (Touvron et al. 2021)
    # MoCo-v3's ViT-S has 12 heads of 32 dims (facebookresearch/moco-v3 vits.py), unlike
    # DeiT-S's 6 heads of 64.
    "vit_small": Arch(_vit(384, 12, 12), "vit", dim=384, depth=12),
    "vit_base": Arch(_vit(768, 12, 12), "vit", dim=768, depth=12),
}
BACKBONES: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    name: arch.build for name, arch in ARCHS.items()}


def _arch(name: str) -> Arch:
    if is_timm(name):
        return _timm_arch(name)
    if name not in ARCHS:
        raise ConfigError(f"unknown backbone '{name}'; valid: {', '.join(ARCHS)}, or "
                          f"{TIMM_PREFIX}<name>")
    return ARCHS[name]


def is_vit(name: str) -> bool:
    """Whether ``name`` is a transformer (BatchFormerV2 needs one; MoCo-v3 picks its ViT
    defaults)."""
    return _arch(name).family == "vit"


def feature_dim(name: str, width: int = 64) -> int:
    """The feature dimension of backbone ``name`` at ResNet base width ``width``, without
    building it: 8 x width x expansion for a ResNet, the hidden width for a ViT, timm's
    ``num_features`` for a timm model."""
    arch = _arch(name)
    return arch.dim if arch.family != "resnet" else 8 * width * arch.expansion


def vit_depth(name: str, depth: Optional[int] = None) -> int:
    """The number of blocks of ViT ``name``: ``depth`` (model.vit_depth) or the model's own."""
    return depth if depth is not None else _arch(name).depth


def build_backbone(name: str, *, in_channels: int = 3, cifar_stem: bool = False, width: int = 64,
                   zero_init_residual: bool = False, image_size: int = 224, patch_size: int = 16,
                   depth: Optional[int] = None, freeze_patch_embed: bool = False,
                   maxpool: Optional[bool] = None) -> tuple[nn.Module, int]:
    """``(backbone without classifier, feature dim)`` for ``name`` in :data:`BACKBONES` or
    ``timm/<name>``."""
    build = _arch(name).build
    if in_channels not in (1, 3):
        raise ConfigError(f"in_channels={in_channels} is invalid: use 1 or 3")
    if depth is not None and depth < 1:
        raise ConfigError(f"model.vit_depth={depth} is invalid: must be >= 1")
    return build(in_channels=in_channels, cifar_stem=cifar_stem, width=width,
                           zero_init_residual=zero_init_residual, image_size=image_size,
                           patch_size=patch_size, depth=depth,
                           freeze_patch_embed=freeze_patch_embed, maxpool=maxpool)


def backbone_from_config(cfg: Any) -> tuple[nn.Module, int]:
    """:func:`build_backbone` from a full :class:`sslkit.config.Config` (model + data)."""
    m = cfg.model
    return build_backbone(m.backbone, in_channels=cfg.data.channels, cifar_stem=m.cifar_stem,
                          width=m.width, zero_init_residual=m.zero_init_residual,
                          image_size=cfg.data.image_size, patch_size=m.patch_size,
                          depth=m.vit_depth, freeze_patch_embed=m.freeze_patch_embed,
                          maxpool=m.maxpool)
