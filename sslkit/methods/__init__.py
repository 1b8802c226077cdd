"""Self-supervised methods: the registry (``@register("name")``), the classes to build on
(:class:`MoCoBase`, :class:`MoCoV2`, :class:`MoCoV3`) and :func:`build_method`.

A new method is its module (a subclass, registered with ``@register``) plus its import
below; docs/architecture.md, "Add a method".
"""
from __future__ import annotations

from torch import nn

from sslkit.config import Config
from sslkit.methods.base import MoCoBase
from sslkit.methods.moco_v2 import MoCoV2  # registers "mocov2"
from sslkit.methods.moco_v3 import MoCoV3  # registers "mocov3"
from sslkit.methods.registry import METHODS, method_class, register
from sslkit.methods.resolve import resolved
from sslkit.models.backbones import backbone_from_config

__all__ = ["METHODS", "MoCoBase", "MoCoV2", "MoCoV3", "build_method", "method_class",
           "register", "resolved"]


def build_method(cfg: Config) -> nn.Module:
    """The method ``cfg.method.name`` around the backbone of ``cfg.model``, built by the
    registered class from the resolved config (:func:`resolved`: keys left null take their
    defaults; the config a run resolved once is taken as it is)."""
    cfg = resolved(cfg)
    backbone, feat_dim = backbone_from_config(cfg)
    return method_class(cfg.method.name).from_config(cfg, backbone, feat_dim)
