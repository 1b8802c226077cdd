"""Backbone export: the online backbone alone, BatchFormer / heads / momentum encoder removed.

``backbone.pt`` is a plain state dict with torchvision's key names (the method keeps its
online encoder at ``backbone.*``; the prefix is stripped), so e.g. a torchvision ResNet built
with the same stem and ``fc = nn.Identity()`` loads it with ``strict=True``.

    python -m sslkit.export runs/demo/checkpoints/last.pt runs/demo/backbone_copy.pt
"""
from __future__ import annotations

import os
import sys
from collections import OrderedDict
from pathlib import Path

import torch

from sslkit.checkpoint import (is_sslkit_checkpoint, load_any, load_checkpoint, load_into,
                               load_state_dict_file, save_atomic)
from sslkit.config import build as build_config, read_yaml_file
from sslkit.data.info import normalization
from sslkit.errors import CheckpointError, OneLineParser, UserError, guard
from sslkit.models.backbones import backbone_from_config

BACKBONE_PREFIX = "backbone."


def backbone_state_dict(model_state: dict) -> "OrderedDict[str, torch.Tensor]":
    """The online backbone's entries of a method state dict, with the prefix removed."""
    out = OrderedDict((k[len(BACKBONE_PREFIX):], v.detach().clone())
                      for k, v in model_state.items() if k.startswith(BACKBONE_PREFIX))
    if not out:
        raise CheckpointError("the checkpoint's model has no 'backbone.*' entries; is it an "
                              "sslkit checkpoint?")
    return out


def export_backbone(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write ``out`` = the backbone state dict of the training checkpoint ``checkpoint``."""
    ckpt = load_checkpoint(checkpoint)
    out = Path(out)
    if out.resolve() == Path(checkpoint).resolve():
        raise UserError(f"refusing to overwrite the checkpoint {checkpoint} with its export; "
                        f"choose another output path")
    if out.parent and not out.parent.exists():
        raise UserError(f"output directory {out.parent} does not exist")
    save_atomic(backbone_state_dict(ckpt["model"]), out, keep_previous=False)
    return out


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run directory a checkpoint file belongs to (``<run>/checkpoints/last.pt`` or
    ``<run>/backbone.pt``)."""
    path = Path(path).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def read_backbone_source(path: str | os.PathLike) -> tuple["OrderedDict[str, torch.Tensor]",
                                                         dict | None]:
    """Backbone weights and (if known) the run's config dict from ``last.pt`` or
    ``backbone.pt``. For ``backbone.pt`` the config comes from ``config.yaml`` beside it."""
    path = Path(path)
    obj = load_any(path)
    if is_sslkit_checkpoint(obj):
        ckpt = load_checkpoint(path) if not isinstance(obj.get("config"), dict) else obj
        return backbone_state_dict(ckpt["model"]), ckpt["config"]
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        raise CheckpointError(f"'{path}' looks like a checkpoint of another toolkit (no 'format: "
                              f"sslkit' entry)")
    state = load_state_dict_file(path)
    # A torchvision-style state dict may carry a classifier: the backbone has none.
    state = OrderedDict((k, v) for k, v in state.items() if not k.startswith(("fc.", "heads.")))
    cfg_file = run_dir_of(path) / "config.yaml"
    if cfg_file.is_file():
        return state, read_yaml_file(cfg_file)
    return state, None


def load_backbone(path: str | os.PathLike) -> tuple[torch.nn.Module, tuple, tuple]:
    """``(backbone in eval mode, mean, std)`` of a run: ``path`` is the run directory, its
    ``backbone.pt`` or its ``checkpoints/last.pt``. The network is built from the run's
    ``config.yaml`` (any width, stem or ViT size; strict loading), and ``mean`` / ``std`` are
    the per-channel input normalisation the backbone was trained with (images in [0, 1]).

        net, mean, std = load_backbone("runs/demo")
        x = (images.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        features = net(x)                                   # (B, feat_dim)
    """
    path = Path(path)
    if path.is_dir():
        path = path / "backbone.pt"
    state, cfg_dict = read_backbone_source(path)
    if cfg_dict is None:
        raise CheckpointError(f"'{path}' has no config.yaml beside it: build the network "
                              f"yourself (sslkit.models.backbones.build_backbone)")
    cfg = build_config(cfg_dict, source=str(path))
    net, _ = backbone_from_config(cfg)
    load_into(net, state, str(path), what="backbone")
    mean, std = normalization(cfg.data.name, cfg.data.channels, cfg.data.mean, cfg.data.std)
    return net.eval(), mean, std


def _main(argv: list[str] | None) -> int:
    p = OneLineParser(prog="python -m sslkit.export",
                      description="Export the backbone of a training checkpoint (torchvision "
                                  "key names; no BatchFormer, heads or momentum encoder).")
    p.add_argument("checkpoint", help="checkpoints/last.pt of a run")
    p.add_argument("out", help="output file, e.g. backbone.pt")
    args = p.parse_args(argv)
    print(f"wrote {export_backbone(args.checkpoint, args.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return guard(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
