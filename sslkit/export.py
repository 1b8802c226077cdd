"""Backbone export and reading: the online backbone alone (BatchFormer, heads, momentum
encoder removed), from an sslkit checkpoint or from a checkpoint of the field
(:mod:`sslkit.io.layouts`: facebookresearch/moco v1/v2, moco-v3 ResNet/ViT, DeiT format, timm
ViT, torchvision ResNet), written in the key names of the tool it goes on to.

``backbone.pt`` (``--format torchvision``, the default) is a plain state dict with
torchvision's key names (the method keeps its online encoder at ``backbone.*``; the prefix is
stripped), so e.g. a torchvision ResNet built with the same stem and ``fc = nn.Identity()``
loads it with ``strict=True``. ``--format timm`` writes timm's names (a ViT's converted; a
ResNet's are the same), ``--format detectron2`` the pickle detectron2 reads for a ResNet.

    python -m sslkit.export runs/demo/checkpoints/last.pt runs/demo/backbone_copy.pt
    python -m sslkit.export vit-s-300ep.pth.tar vit-s_timm.pth --format timm
    python -m sslkit.export moco_v2_200ep_pretrain.pth.tar r50_d2.pkl --format detectron2
"""
from __future__ import annotations

import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslkit.io.checkpoint import (is_sslkit_checkpoint, load_any, load_checkpoint, load_into,
                               save_atomic)
from sslkit.config import Config, build as build_config, read_yaml_file
from sslkit.data.info import normalization
from sslkit.errors import CheckpointError, OneLineParser, UserError, guard
from sslkit.io.layouts import (LAYOUTS, dump_detectron2, match_names, naming,
                               position_embedding_note, read_foreign, timm_vit_to_torchvision,
                               to_detectron2, torchvision_vit_to_timm, unknown_layout)
from sslkit.models.backbones import backbone_from_config

BACKBONE_PREFIX = "backbone."
FORMATS = ("torchvision", "timm", "detectron2")


def backbone_state_dict(model_state: dict) -> "OrderedDict[str, torch.Tensor]":
    """The online backbone's entries of a method state dict, with the prefix removed."""
    out = OrderedDict((k[len(BACKBONE_PREFIX):], v.detach().clone())
                      for k, v in model_state.items() if k.startswith(BACKBONE_PREFIX))
    if not out:
        raise CheckpointError("the checkpoint's model has no 'backbone.*' entries; is it an "
                              "sslkit checkpoint?")
    return out


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run directory a checkpoint file belongs to (``<run>/checkpoints/last.pt`` or
    ``<run>/backbone.pt``)."""
    path = Path(path).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def results_dir(checkpoint: str | None, baseline: str | None, output: str | None,
                run_dir: Path | None, default: str, suffix: str) -> Path:
    """Where an evaluation of ``checkpoint`` writes its results (``eval.json``,
    ``finetune.json``): ``output``, else the checkpoint's sslkit run directory ``run_dir``,
    else, for a file of no sslkit run (an official MoCo file), ``<its folder>/<its name
    without extension>_<suffix>/``, else (a baseline without a checkpoint) ``default``; a
    baseline's results go into ``baseline_<name>/`` below it."""
    if output is not None:
        base = Path(output)
    elif run_dir is not None:
        base = run_dir
    elif checkpoint is not None:
        path = Path(checkpoint).resolve()
        stem = path.name
        for ext in (".tar", ".pth", ".pt", ".ckpt", ".bin"):
            stem = stem[:-len(ext)] if stem.endswith(ext) and len(stem) > len(ext) else stem
        base = path.parent / f"{stem}_{suffix}"
    else:
        base = Path(default)
    return base / f"baseline_{baseline.replace('-', '_')}" if baseline else base


@dataclass(frozen=True)
class Source:
    """A checkpoint's backbone: ``state`` (no head), ``config`` (the run's config dict, or
    None for a file without one), ``layout`` (a key of :data:`sslkit.io.layouts.LAYOUTS`, or
    ``state-dict``), ``run_dir`` (the sslkit run the file belongs to, or None)."""

    state: "OrderedDict[str, torch.Tensor]"
    config: dict | None
    layout: str
    run_dir: Path | None


def _is_timm_run(src: Source) -> bool:
    """The file is a ``timm/<name>`` run's: its backbone keeps timm's names."""
    return str(((src.config or {}).get("model") or {}).get("backbone", "")).startswith("timm/")


def read_source(path: str | os.PathLike) -> Source:
    """The backbone of any checkpoint sslkit reads. An sslkit ``last.pt`` carries its config;
    a plain state dict (``backbone.pt``) takes ``config.yaml`` beside it (or the run's, for
    ``checkpoints/``); the field's layouts carry none. A ViT whose position embedding is not
    sslkit's sin-cos one (a learned one) is said in one line."""
    path = Path(path)
    obj = load_any(path)
    if is_sslkit_checkpoint(obj):
        ckpt = load_checkpoint(path) if not isinstance(obj.get("config"), dict) else obj
        src = Source(backbone_state_dict(ckpt["model"]), ckpt["config"], "sslkit",
                     run_dir_of(path))
    elif isinstance(obj, dict) and "model" in obj and "config" in obj:
        raise CheckpointError(f"'{path}' looks like a checkpoint of another toolkit (no 'format: "
                              f"sslkit' entry)")
    else:
        bb = read_foreign(obj, str(path))
        layout = bb.layout if bb.naming != "other" else "state-dict"
        cfg_file = run_dir_of(path) / "config.yaml"
        if layout in ("torchvision", "timm-vit", "state-dict") and cfg_file.is_file():
            src = Source(bb.state, read_yaml_file(cfg_file), layout, cfg_file.parent)
        else:
            src = Source(bb.state, None, layout, None)
    note = None if _is_timm_run(src) else position_embedding_note(src.state, str(path))
    if note:  # a timm/<name> run's learned embedding is its own: nothing to say
        print(note, flush=True)
    return src


def read_backbone_source(path: str | os.PathLike) -> tuple["OrderedDict[str, torch.Tensor]",
                                                         dict | None]:
    """(backbone weights, the run's config dict or None) of any checkpoint sslkit reads."""
    src = read_source(path)
    return src.state, src.config


_RECIPES = {"moco": "configs/imagenet_mocov2_200ep.yaml",
            "moco-v3": "configs/imagenet_mocov3_r50_100ep.yaml or imagenet_mocov3_vits_300ep.yaml",
            "deit": "configs/imagenet_mocov3_vits_300ep.yaml",
            "timm-vit": "configs/imagenet_mocov3_vits_300ep.yaml"}


def no_config_error(path: str | os.PathLike, layout: str, how: str) -> CheckpointError:
    """The error for a file that carries no config when nothing names one."""
    what = LAYOUTS.get(layout, "a state dict").split(" (")[0]
    example = _RECIPES.get(layout, "the config.yaml of the run that wrote it")
    return CheckpointError(f"'{path}' ({what}) carries no config and has no config.yaml "
                           f"beside it: {how}, the recipe it was trained with (e.g. {example})")


def _config(config: Any, path: Path) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return build_config(config, source=f"the config given for {path}")
    return build_config(read_yaml_file(config), source=str(config))


def load_backbone(path: str | os.PathLike, config: Any = None
                  ) -> tuple[torch.nn.Module, tuple, tuple]:
    """``(backbone in eval mode, mean, std)``: ``path`` is a run directory, its
    ``backbone.pt`` or ``checkpoints/last.pt``, or a checkpoint of the field (MoCo v1/v2,
    MoCo-v3 ResNet/ViT, DeiT format, timm ViT, torchvision ResNet). The network is built from
    ``config`` (a YAML path, a config dict or a :class:`~sslkit.config.Config`; needed for
    files without a ``config.yaml`` beside them, and it wins over one) or else from the run's
    config (any width, stem or ViT size; strict loading), and ``mean`` / ``std`` are the
    per-channel input normalisation of that config (images in [0, 1]).

        net, mean, std = load_backbone("runs/demo")
        net, mean, std = load_backbone("moco_v2_200ep_pretrain.pth.tar",
                                       config="configs/imagenet_mocov2_200ep.yaml")
        x = (images.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        features = net(x)                                   # (B, feat_dim)
    """
    path = Path(path)
    if path.is_dir():
        path = path / "backbone.pt"
    src = read_source(path)
    if config is not None:
        cfg = _config(config, path)
    elif src.config is not None:
        cfg = build_config(src.config, source=str(path))
    else:
        raise no_config_error(path, src.layout, "pass config=")
    net, _ = backbone_from_config(cfg)
    load_into(net, match_names(src.state, net.state_dict()), str(path), what="backbone")
    mean, std = normalization(cfg.data.name, cfg.data.channels, cfg.data.mean, cfg.data.std)
    return net.eval(), mean, std


def convert(state: dict, fmt: str) -> Any:
    """The object ``--format fmt`` writes for a backbone ``state`` (see the module doc)."""
    name = naming(state)
    if fmt == "detectron2":
        return to_detectron2(state)
    if fmt == "timm":
        return torchvision_vit_to_timm(state) if name == "torchvision-vit" else state
    if name == "timm-vit":
        return timm_vit_to_torchvision(state)
    if name == "other":
        raise CheckpointError("this backbone is neither a ResNet nor a ViT, so it has no "
                              "torchvision layout; export it with --format timm")
    return state



def export_backbone(checkpoint: str | os.PathLike, out: str | os.PathLike,
                    format: str = "torchvision") -> Path:
    """Write ``out`` = the backbone of ``checkpoint`` (any file :func:`read_source` reads) in
    ``format`` (``torchvision``, ``timm`` or ``detectron2``); nothing is written on error."""
    if format not in FORMATS:
        raise UserError(f"unknown export format '{format}'; use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.resolve() == Path(checkpoint).resolve():
        raise UserError(f"refusing to overwrite the checkpoint {checkpoint} with its export; "
                        f"choose another output path")
    if out.is_dir():
        raise UserError(f"output {out} is a directory; give a file name, e.g. {out / 'backbone.pt'}")
    if out.parent and not out.parent.exists():
        raise UserError(f"output directory {out.parent} does not exist")
    if format == "detectron2" and out.suffix != ".pkl":
        raise UserError(f"detectron2 reads a pickled backbone by its .pkl extension; name the "
                        f"output e.g. {out.with_suffix('.pkl').name}")
    src = read_source(checkpoint)
    if naming(src.state) == "other" and not _is_timm_run(src):
        # a state dict of no model sslkit knows, and no run of a timm model says what it is
        raise unknown_layout(str(checkpoint), src.state)
    obj = convert(src.state, format)
    save_atomic(obj, out, keep_previous=False,
                dump=dump_detectron2 if format == "detectron2" else None)
    return out


def _main(argv: list[str] | None) -> int:
    p = OneLineParser(prog="python -m sslkit.export",
                      description="Export the backbone of a checkpoint (no BatchFormer, heads, "
                                  "predictor or momentum encoder) for torchvision, timm or "
                                  "detectron2. SRC: an sslkit last.pt / backbone.pt or a "
                                  "checkpoint of the field (" + "; ".join(
                                      v for k, v in LAYOUTS.items() if k != "sslkit") + ")")
    p.add_argument("checkpoint", metavar="SRC", help="the checkpoint to read")
    p.add_argument("out", metavar="OUT", help="output file, e.g. backbone.pt (detectron2: .pkl)")
    p.add_argument("--format", choices=FORMATS, default="torchvision",
                   help="torchvision (default): torchvision's key names, the run's "
                        "backbone.pt; timm: timm's names (ViTs converted, ResNets the same); "
                        "detectron2 (ResNets): the pickle detectron2 reads")
    args = p.parse_args(argv)
    print(f"wrote {export_backbone(args.checkpoint, args.out, args.format)} ({args.format})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return guard(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
