"""What ``run_lincls.py`` evaluates, built from the command line: the config, the model (a
checkpoint's backbone or a baseline), the data and transforms, the output directory.

Config
    base = ``--config`` if given, else the checkpoint's config (``last.pt`` carries it;
    ``backbone.pt`` takes ``config.yaml`` beside it), then ``--set`` overrides. A checkpoint
    of the field (official MoCo v1/v2, MoCo-v3, DeiT format, timm, torchvision;
    :mod:`sslkit.io.layouts`) carries none: ``--config`` names its recipe. A baseline
    without ``--checkpoint`` and ``--config`` uses ``configs/demo.yaml`` (as run_pretrain.py
    does). The dataset's "train" split trains the probe / is the kNN bank, "test" is reported;
    ``finetune.label_fraction`` / ``finetune.subset_file`` cut the train split to the labelled
    images fine-tuning uses (:func:`sslkit.data.labelled_subset`), so that the two protocols
    compare at the same labels.

Models
    checkpoint: the configured backbone with the checkpoint's weights (``load_into``: an
    architecture mismatch is a one-line CheckpointError naming it). ``--baseline random-init``:
    the configured backbone, randomly initialised with ``run.seed``. ``--baseline
    raw-pixels``: features = the flattened, normalised pixels of the eval view.

Processes
    Under torchrun each process takes its share of the images (:mod:`linear_eval.sharding`);
    a single process is the world of one.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from linear_eval.sharding import batch_shard
from linear_eval.transforms import ProbeTrainTransform
from sslkit import config as config_mod
from sslkit import distributed as dist
from sslkit.augment import CenterView, eval_transform_from_config
from sslkit.io.checkpoint import load_into
from sslkit.data import (TrainSampler, build_loader, dataset_from_config, labelled_subset,
                         normalization, tensor_pair)
from sslkit.errors import CheckpointError, UserError
from sslkit.export import Source, no_config_error, read_source, results_dir
from sslkit.io.layouts import match_names
from sslkit.models.backbones import backbone_from_config
from sslkit.train.runtime import (PrecisionChoice, choose_precision, configure_cpu, resolve_device,
                            seed_everything)

BASELINES = ("raw-pixels", "random-init")


def resolve_config(checkpoint: str | None, config_path: str | None,
                   overrides: list[str] | None, baseline: str | None
                   ) -> tuple[config_mod.Config, Source | None]:
    """``(config, the checkpoint's backbone or None)`` (see the module docstring)."""
    src = read_source(checkpoint) if checkpoint is not None else None
    if config_path is not None:
        data, source = config_mod.read_yaml_file(config_path), str(config_path)
    elif src is not None and src.config is not None:
        data, source = src.config, f"the config of {checkpoint}"
    elif src is not None:
        raise no_config_error(checkpoint, src.layout, "pass its config with --config PATH")
    else:
        path = config_mod.demo_config_path()
        data, source = config_mod.read_yaml_file(path), str(path)
    return config_mod.build(data, overrides, source=source), src


def build_model(cfg: config_mod.Config, state: dict | None, checkpoint: str | None,
                baseline: str | None) -> tuple[nn.Module, int]:
    """``(frozen feature extractor, feature dim)`` for the checkpoint or the baseline."""
    if baseline == "raw-pixels":
        s = cfg.data.image_size
        return nn.Flatten(), cfg.data.channels * s * s
    torch.manual_seed(cfg.run.seed)  # random-init: the seeded initialisation
    backbone, feat_dim = backbone_from_config(cfg)
    if baseline is None:
        if state is None:
            raise CheckpointError("no checkpoint given; pass --checkpoint PATH or --baseline")
        m = cfg.model
        arch = (f"{m.backbone}, width {m.width}, cifar_stem={str(m.cifar_stem).lower()}"
                if m.backbone.startswith("resnet") else f"{m.backbone}, patch {m.patch_size}"
                if m.backbone.startswith("vit") else m.backbone)
        load_into(backbone, match_names(state, backbone.state_dict()), str(checkpoint),
                  what=f"backbone ({arch}, {cfg.data.channels} input channels)")
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone, feat_dim


def output_dir(cfg: config_mod.Config, checkpoint: str | None, baseline: str | None,
               output: str | None, run_dir: Path | None = None) -> Path:
    """Where ``eval.json`` goes (:func:`sslkit.export.results_dir`; a file of no sslkit run:
    ``<its name>_lincls/`` beside it)."""
    return results_dir(checkpoint, baseline, output, run_dir, cfg.run.output_dir, "lincls")


def data_source(ds, batch_size: int, cfg: config_mod.Config, device: torch.device, *,
                 train: bool):
    """In-memory datasets as an (images, labels) pair; others as a loader."""
    pair = tensor_pair(ds)
    if pair is not None:
        images, labels = pair
        keep = labels >= 0  # STL-10 marks unlabeled images with -1
        return (images, labels) if bool(keep.all()) else (images[keep], labels[keep])
    return build_loader(ds, batch_size, train=train, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda", seed=cfg.run.seed)


def probe_train_source(ds, cfg: config_mod.Config, device: torch.device):
    """The standard probe's training data: an (images, labels) pair (shuffled and split by
    the probe itself), or a loader whose seeded sampler gives each process its share of
    every epoch and batches of eval.batch_size / processes."""
    pair = data_source(ds, cfg.eval.batch_size, cfg, device, train=True)
    if isinstance(pair, tuple):
        return pair
    world = dist.get_world_size()
    sampler = TrainSampler(len(ds), seed=cfg.run.seed, rank=dist.get_rank(), world_size=world,
                           drop_last=False)
    return build_loader(ds, max(1, cfg.eval.batch_size // world), train=True, sampler=sampler,
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                        seed=cfg.run.seed)


def shard_source(ds, cfg: config_mod.Config, device: torch.device):
    """This process's share of ``ds`` for evaluation (every image of one process)."""
    world = dist.get_world_size()
    if world > 1:
        ds = ds.subset(batch_shard(len(ds), cfg.eval.batch_size, dist.get_rank(), world))
    return data_source(ds, cfg.eval.batch_size, cfg, device, train=False)


@dataclasses.dataclass
class Setup:
    """Everything an evaluation needs, built from the command line."""

    cfg: config_mod.Config
    device: torch.device
    precision: str
    precision_choice: PrecisionChoice
    backbone: nn.Module
    feat_dim: int
    out_dir: Path
    train_ds: Any
    test_ds: Any
    num_classes: int
    eval_tf: CenterView
    train_tf: ProbeTrainTransform


def prepare(checkpoint: str | None, config_path: str | None, overrides: list[str] | None,
            baseline: str | None, output: str | None) -> Setup:
    """Check the command line, then build config, device, model, data and transforms."""
    if baseline is not None and baseline not in BASELINES:
        raise UserError(f"unknown baseline '{baseline}'; use one of {', '.join(BASELINES)}")
    if checkpoint is None and baseline is None:
        raise UserError("run_lincls.py needs --checkpoint PATH (a last.pt or backbone.pt), "
                        "or --baseline raw-pixels|random-init with --config")
    cfg, src = resolve_config(checkpoint, config_path, overrides, baseline)
    configure_cpu(cfg.run)
    seed_everything(cfg.run.seed)
    device = resolve_device(cfg.run)
    choice = choose_precision(cfg.run, device)
    if dist.init_distributed(device.type):  # one precision for every rank: rank 0's probe
        choice = dist.broadcast_object(choice)
    backbone, feat_dim = build_model(cfg, src.state if src else None, checkpoint, baseline)
    backbone.to(device)
    out_dir = output_dir(cfg, checkpoint, baseline, output, src.run_dir if src else None)
    train_ds = labelled_subset(dataset_from_config(cfg.data, "train", seed=cfg.run.seed),
                               cfg.data.name, cfg.finetune.label_fraction,
                               cfg.finetune.subset_file, cfg.run.seed)
    test_ds = dataset_from_config(cfg.data, "test", seed=cfg.run.seed)
    num_classes = int(getattr(train_ds, "num_classes", 0) or 0)
    if num_classes < 2:
        raise UserError(f"dataset '{cfg.data.name}' has {num_classes} classes; linear "
                        f"evaluation needs at least 2 (class folders for an image folder)")
    mean, std = normalization(cfg.data.name, cfg.data.channels, cfg.data.mean, cfg.data.std)
    eval_tf = eval_transform_from_config(cfg).to(device)
    train_tf = ProbeTrainTransform(cfg.data.image_size, mean, std, cfg.data.channels).to(device)
    return Setup(cfg, device, choice.precision, choice, backbone, feat_dim, out_dir, train_ds,
                 test_ds, num_classes, eval_tf, train_tf)
