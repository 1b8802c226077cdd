"""The config a run actually uses: every key left null for "the default" filled with the value
the code takes, so that ``config.yaml`` and ``--print-config`` say what runs.

Filled here (each from the function that decides it): the input normalisation
(``data.mean`` / ``data.std``, :func:`sslkit.data.normalization`), the ImageFolder evaluation
resize (``data.load_size``), every augmentation parameter of the preset
(:func:`sslkit.augment.resolve_params`), the ResNet stem's max-pool and the ViT depth, the
MoCo-v2 projector's hidden width and the BatchFormer's feed-forward width (the backbone's
feature dimension), the BatchFormer's weight decay and BatchFormerV2's insertion points. Nulls that mean "off" or "no limit" (``train.max_steps``,
``eval.knn_bank_size``, ``data.subset``, ``optim.grad_clip``, ...) and ``run.num_threads``
(the machine's default) stay null. Loading the result gives the same run.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sslkit.augment import OVERRIDE_KEYS, resolve_params
from sslkit.config import VIT_DEPTH, Config, insertion_points, resolved_preset
from sslkit.data.info import normalization, resize_side
from sslkit.models.backbones import backbone_from_config


def feature_dim(cfg: Config) -> int:
    """The backbone's feature dimension (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        return backbone_from_config(cfg)[1]


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (tuple, list)) else v


def resolved(cfg: Config) -> Config:
    """``cfg`` with every defaulted null replaced by the value used (see the module doc)."""
    d, m, model, bf = cfg.data, cfg.method, cfg.model, cfg.batchformer
    mean, std = normalization(d.name, d.channels, d.mean, d.std)
    data = dataclasses.replace(d, mean=list(mean), std=list(std))
    if d.name == "imagefolder" and d.load_size is None:
        data = dataclasses.replace(data, load_size=resize_side(d.image_size))
    params = resolve_params(resolved_preset(cfg),
                            **{k: getattr(cfg.augment, k) for k in OVERRIDE_KEYS})
    augment = dataclasses.replace(cfg.augment, preset=resolved_preset(cfg),
                                  **{k: _plain(params[k]) for k in OVERRIDE_KEYS})
    vit = model.backbone.startswith("vit")
    fill_model = {}
    if not vit and model.maxpool is None:
        fill_model["maxpool"] = not model.cifar_stem
    if vit and model.vit_depth is None:
        with torch.device("meta"):
            fill_model["vit_depth"] = len(backbone_from_config(cfg)[0].encoder.layers)
    dim = feature_dim(cfg)
    method = m
    if m.name == "mocov2" and m.proj_hidden_dim is None:
        method = dataclasses.replace(m, proj_hidden_dim=dim)
    fill_bf = {}
    if bf.enabled and bf.ffn_dim is None:
        fill_bf["ffn_dim"] = dim
    if bf.enabled and bf.weight_decay is None:
        fill_bf["weight_decay"] = cfg.optim.weight_decay
    if bf.enabled and bf.version == "v2" and bf.insert_after is None:
        fill_bf["insert_after"] = insertion_points(None, fill_model.get("vit_depth")
                                                   or model.vit_depth or VIT_DEPTH)
    batchformer = dataclasses.replace(bf, **fill_bf)
    return dataclasses.replace(cfg, data=data, augment=augment, method=method,
                               batchformer=batchformer,
                               model=dataclasses.replace(model, **fill_model))
