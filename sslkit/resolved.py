"""The config a run actually uses: every key left null for "the default" filled with the value
the code takes, and the rules that need the method's or the model's facts checked, so that
``config.yaml`` and ``--print-config`` say what runs.

This is the one place where defaults are filled; each value comes from the code that owns
it:

* the method's paper defaults and its rules (``paper_defaults`` / ``check_config`` of the
  classes in :data:`sslkit.methods.registry.METHODS`);
* the backbone's facts (:mod:`sslkit.models.backbones`: feature width, ViT depth, the ResNet
  stem's max-pool), read from the registry without building a network (a ``timm/<name>``
  model is built once on the meta device);
* BatchFormerV2's insertion points (:func:`sslkit.models.batchformer.insertion_points`);
* the augmentation preset and its parameters (:func:`sslkit.augment.resolved_preset`,
  :func:`sslkit.augment.resolve_params`);
* the input normalisation and the ImageFolder evaluation resize (:mod:`sslkit.data.info`);
* the MoCo-v2 projector's hidden width and the BatchFormer's feed-forward width (the
  backbone's feature dimension), the BatchFormer's weight decay (``optim.weight_decay``).

Nulls that mean "off" or "no limit" (``train.max_steps``, ``eval.knn_bank_size``,
``data.subset``, ``optim.grad_clip``, ...) and ``run.num_threads`` (the machine's default)
stay null. Resolving a resolved config returns an equal one; the engine resolves once per run.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Any

from sslkit.augment import OVERRIDE_KEYS, resolve_params, resolved_preset
from sslkit.config import Config
from sslkit.data.info import normalization, resize_side
from sslkit.methods.registry import METHODS
from sslkit.models.backbones import default_maxpool, feature_dim as arch_feature_dim, is_timm
from sslkit.models.backbones import is_vit, vit_depth
from sslkit.models.batchformer import insertion_points, v2_needs_vit, v2_not_on_timm


# The configs this module returned: resolving one of them again returns it at once.
_RESOLVED: "weakref.WeakValueDictionary[int, Config]" = weakref.WeakValueDictionary()


def feature_dim(cfg: Config) -> int:
    """The backbone's feature dimension (from the registry: nothing is built)."""
    return arch_feature_dim(cfg.model.backbone, cfg.model.width)


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (tuple, list)) else v


def resolved(cfg: Config) -> Config:
    """``cfg`` with every defaulted null replaced by the value used (see the module doc); a
    rule broken by the combination of keys is a one-line ConfigError."""
    if _RESOLVED.get(id(cfg)) is cfg:
        return cfg
    d, m, model, bf = cfg.data, cfg.method, cfg.model, cfg.batchformer
    vit = is_vit(model.backbone)  # for timm/<name>: a missing timm or model stops here
    timm = is_timm(model.backbone)  # sslkit's model options do not apply to a timm model
    dim = feature_dim(cfg)
    method_cls = METHODS[m.name]
    fill_method = {k: v for k, v in method_cls.paper_defaults(vit).items()
                   if getattr(m, k) is None}
    if m.name == "mocov2" and m.proj_hidden_dim is None:
        fill_method["proj_hidden_dim"] = dim  # the official D-D-128 head
    method = dataclasses.replace(m, **fill_method)

    mean, std = normalization(d.name, d.channels, d.mean, d.std)
    data = dataclasses.replace(d, mean=list(mean), std=list(std))
    if d.name == "imagefolder" and d.load_size is None:
        data = dataclasses.replace(data, load_size=resize_side(d.image_size))

    preset = resolved_preset(cfg)
    params = resolve_params(preset, **{k: getattr(cfg.augment, k) for k in OVERRIDE_KEYS})
    augment = dataclasses.replace(cfg.augment, preset=preset,
                                  **{k: _plain(params[k]) for k in OVERRIDE_KEYS})

    fill_model: dict[str, Any] = {}
    if not vit and not timm and model.maxpool is None:
        fill_model["maxpool"] = default_maxpool(model.cifar_stem)
    if vit and not timm and model.vit_depth is None:
        fill_model["vit_depth"] = vit_depth(model.backbone)

    fill_bf: dict[str, Any] = {}
    if bf.enabled and bf.ffn_dim is None:
        fill_bf["ffn_dim"] = dim
    if bf.enabled and bf.weight_decay is None:
        fill_bf["weight_decay"] = cfg.optim.weight_decay
    if bf.enabled and bf.version == "v2":
        if timm:
            raise v2_not_on_timm(model.backbone)
        if not vit:
            raise v2_needs_vit(model.backbone)
        fill_bf["insert_after"] = insertion_points(bf.insert_after,
                                                   vit_depth(model.backbone, model.vit_depth))
    out = dataclasses.replace(cfg, data=data, augment=augment, method=method,
                              batchformer=dataclasses.replace(bf, **fill_bf),
                              model=dataclasses.replace(model, **fill_model))
    method_cls.check_config(out)
    _RESOLVED[id(out)] = out
    return out
