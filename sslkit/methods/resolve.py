"""The config a run actually uses: every key left null for "the default" filled with the value
the code takes, and the rules that need the method's, the model's or the data source's facts
checked, so that ``config.yaml`` and ``--print-config`` say what runs.

This is the one place where defaults are filled; each value comes from the code that owns
it:

* the method's class in the registry (:func:`sslkit.methods.registry.method_class`): its
  paper defaults (the MoCo-v2 projector's hidden width is the backbone's feature dimension),
  its augmentation preset for ``augment.preset: auto`` and its rules (``paper_defaults``,
  ``preset_for``, ``check_config``);
* the backbone's facts (:mod:`sslkit.models.backbones`: feature width, ViT depth, the ResNet
  stem's max-pool), read from the registry without building a network (a ``timm/<name>``
  model is built once on the meta device);
* BatchFormerV2's insertion points (:func:`sslkit.models.batchformer.insertion_points`);
* the augmentation parameters of the preset (:func:`sslkit.augment.resolve_params`);
* the data source's facts (:mod:`sslkit.data.info`): the input normalisation, and for a
  source that decodes files the evaluation resize ``data.load_size``;
* the BatchFormer's feed-forward width (the feature dimension) and weight decay
  (``optim.weight_decay``).

Nulls that mean "off" or "no limit" (``train.max_steps``, ``eval.knn_bank_size``,
``data.subset``, ``optim.grad_clip``, ...) and ``run.num_threads`` (the machine's default)
stay null.

A run resolves its config once, where it starts (the CLI, or the engine and run_lincls for a
config built in Python), and hands the result on: a resolved config is marked
(:func:`is_resolved`), and resolving it again returns it as it is. A config changed after that
(``dataclasses.replace``) is a new, unmarked object.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from sslkit.augment import OVERRIDE_KEYS, resolve_params
from sslkit.config import Config, build as build_config
from sslkit.data.info import dataset_info, normalization, resize_side
from sslkit.errors import ConfigError
from sslkit.methods.registry import method_class
from sslkit.models.backbones import default_maxpool, feature_dim as arch_feature_dim, is_timm
from sslkit.models.backbones import is_vit, vit_depth
from sslkit.models.batchformer import insertion_points, v2_needs_vit, v2_not_on_timm

_MARK = "_sslkit_resolved"


def is_resolved(cfg: Config) -> bool:
    """Whether ``cfg`` is a config :func:`resolved` returned."""
    return bool(getattr(cfg, _MARK, False))


def feature_dim(cfg: Config) -> int:
    """The backbone's feature dimension (from the registry: nothing is built)."""
    return arch_feature_dim(cfg.model.backbone, cfg.model.width)


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (tuple, list)) else v


def resolved(cfg: Config) -> Config:
    """``cfg`` with every defaulted null replaced by the value used (see the module doc); a
    rule broken by the combination of keys is a one-line ConfigError."""
    if is_resolved(cfg):
        return cfg
    d, m, model, bf = cfg.data, cfg.method, cfg.model, cfg.batchformer
    method_cls = method_class(m.name)
    info = dataset_info(d.name)
    vit = is_vit(model.backbone)  # for timm/<name>: a missing timm or model stops here
    timm = is_timm(model.backbone)  # sslkit's model options do not apply to a timm model
    dim = feature_dim(cfg)
    method = dataclasses.replace(m, **{k: v for k, v in method_cls.paper_defaults(vit, dim).items()
                                       if getattr(m, k) is None})

    if d.decode_device == "cuda" and not (info.files and d.crop_from == "original"):
        raise ConfigError(f"data.decode_device=cuda decodes image files for crops of the "
                          f"original image; it needs a dataset of files (e.g. imagefolder) and "
                          f"data.crop_from=original (got {d.name}, {d.crop_from}); or set "
                          f"data.decode_device=cpu")
    mean, std = normalization(d.name, d.channels, d.mean, d.std)
    data = dataclasses.replace(d, mean=list(mean), std=list(std))
    if info.files and d.load_size is None:
        data = dataclasses.replace(data, load_size=resize_side(d.image_size))

    preset = (method_cls.preset_for(d.image_size) if cfg.augment.preset == "auto"
              else cfg.augment.preset)
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
    object.__setattr__(out, _MARK, True)
    return out


def resolved_pair(saved: Config | dict, given: Config, source: str
                  ) -> tuple[Config | dict, Config]:
    """A run's saved config (its ``config.yaml`` with the command line's ``--set`` items, or a
    checkpoint's ``config`` dict) and the given one, both resolved here, for the run
    directory's comparisons (:mod:`sslkit.io.rundir`): a saved config that left a default
    null then matches the same run written out in full. A saved dict this sslkit cannot read
    (another version's keys) comes back as it is, to be compared key by key."""
    given = resolved(given)
    if isinstance(saved, dict):
        try:
            return resolved(build_config(saved, source=source)), given
        except ConfigError:
            return saved, given
    return resolved(saved), given
