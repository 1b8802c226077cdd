"""Self-supervised methods: a name -> class registry and a config-driven builder."""
from __future__ import annotations

from torch import nn

from sslkit.config import Config
from sslkit.methods.base import MoCoBase
from sslkit.methods.moco_v2 import MoCoV2
from sslkit.methods.moco_v3 import MoCoV3
from sslkit.methods.registry import METHODS
from sslkit.models.backbones import backbone_from_config, is_vit
from sslkit.optim import cosine_momentum  # re-exported: the momentum schedule of MoCo-v3

__all__ = ["METHODS", "MoCoBase", "MoCoV2", "MoCoV3", "build_method", "cosine_momentum"]


def build_method(cfg: Config) -> nn.Module:
    """The backbone of ``cfg.model`` wrapped in the method ``cfg.method.name``; keys left null
    take their defaults (:func:`sslkit.resolved.resolved`; a no-op on a resolved config)."""
    from sslkit.resolved import resolved  # resolved imports the method modules: at call time

    cfg = resolved(cfg)
    backbone, feat_dim = backbone_from_config(cfg)
    # MoCo-v3's heads differ for a transformer; a timm ViT is one without nn.MultiheadAttention
    kw = {"vit": is_vit(cfg.model.backbone)} if cfg.method.name == "mocov3" else {}
    return METHODS[cfg.method.name](backbone, feat_dim, cfg.method, cfg.batchformer, **kw)
