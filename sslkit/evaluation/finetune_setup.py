"""What ``run_finetune.py`` fine-tunes, built from the command line: the config, the data and
its input pipeline, the output directory.

Config
    The checkpoint's own config (an sslkit ``last.pt`` carries it; ``backbone.pt`` takes the
    ``config.yaml`` beside it), then the ``--config`` file over it (every key the file sets
    wins: the fine-tuning recipe, and for a checkpoint of the field, which carries no config,
    the model and the data too), then ``--set``; resolved once
    (:func:`sslkit.methods.resolve.resolved`). Without ``--checkpoint`` (a baseline)
    ``--config`` alone, else ``configs/demo.yaml``.

Data
    The training split cut to its labelled images (:func:`sslkit.data.labelled_subset`:
    ``finetune.label_fraction`` or ``finetune.subset_file``), and the test split whole. An
    epoch is ``ceil(N / batch)`` steps: the last batch is filled up with the first images of
    the epoch's seeded order, so that every labelled image trains every epoch (and with few
    labels, batches do not shrink); each process takes rows ``rank, rank + W, ...``.
    ``finetune.augment: crop_flip`` batches uint8 images and makes the view on the device
    (:class:`sslkit.views.supervised.CropFlip`); ``timm`` makes it per image in the loader
    (:class:`sslkit.views.supervised.TimmTrainImages`).

Output
    ``--output DIR``, else the checkpoint's run directory, else (a file of no sslkit run)
    ``<its folder>/<its name without extension>_finetune/``; a baseline in
    ``<that>/baseline_random_init/``. ``finetune.json`` goes there, the run's own files
    (``config.yaml``, ``metrics.jsonl``, ``tb/``, ``checkpoints/last.pt``) into its
    ``finetune/`` folder.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Optional

import torch

from sslkit import config as config_mod
from sslkit.augment import CenterView, eval_transform_from_config
from sslkit.data import (TrainSampler, build_loader, dataset_from_config, dataset_info,
                         labelled_subset, normalization)
from sslkit.errors import ConfigError, UserError
from sslkit.export import Source, no_config_error, read_source, results_dir
from sslkit.methods.resolve import resolved
from sslkit.views.supervised import CropFlip, EpochKeys, TimmTrainImages, timm_train_transform

BASELINES = ("random-init",)


def overlay(base: dict, top: dict) -> dict:
    """``base`` with every key of ``top`` put over it, section by section."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for section, body in top.items():
        if isinstance(body, dict) and isinstance(out.get(section), dict):
            out[section].update(body)
        else:
            out[section] = body
    return out


def finetune_config(checkpoint: Optional[str], config_path: Optional[str],
                    overrides: Optional[list[str]]) -> tuple[config_mod.Config, Optional[Source]]:
    """``(the resolved config, the checkpoint's backbone or None)`` (module docstring)."""
    src = read_source(checkpoint) if checkpoint is not None else None
    base = dict(src.config) if src is not None and src.config is not None else {}
    if config_path is not None:
        top, source = config_mod.read_yaml_file(config_path), str(config_path)
    elif src is not None and src.config is None:
        raise no_config_error(checkpoint, src.layout, "pass its config with --config PATH")
    elif src is not None:
        top, source = {}, f"the config of {checkpoint}"
    else:
        path = config_mod.demo_config_path()
        top, source = config_mod.read_yaml_file(path), str(path)
    if src is not None and src.config is not None and config_path is not None:
        source = f"the config of {checkpoint} + {config_path}"
    return resolved(config_mod.build(overlay(base, top), overrides, source=source)), src


def output_dir(checkpoint: Optional[str], baseline: Optional[str], output: Optional[str],
               run_dir: Optional[Path], cfg: config_mod.Config) -> Path:
    """Where ``finetune.json`` goes (module docstring; a file of no sslkit run:
    ``<its name>_finetune/`` beside it)."""
    return results_dir(checkpoint, baseline, output, run_dir, cfg.run.output_dir, "finetune")


class FullBatchSampler(TrainSampler):
    """:class:`~sslkit.data.TrainSampler` whose shard per process is a whole number of
    batches: ``ceil(N / (W * B)) * B`` indices, the epoch's seeded order wrapped around to
    fill the last batch (module docstring)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        super().__init__(num_samples, seed=seed, rank=rank, world_size=world_size,
                         drop_last=False)
        self.per_rank = math.ceil(num_samples / (world_size * batch_size)) * batch_size


@dataclasses.dataclass
class FinetuneData:
    """The labelled training images, the test split, and how batches reach the step."""

    train: Any
    test: Any
    num_classes: int
    classes: list
    loader: Any
    sampler: FullBatchSampler
    local_batch: int
    steps_per_epoch: int
    transform: Optional[torch.nn.Module]   # the device view (crop_flip), else None
    eval_transform: CenterView


def build_data(cfg: config_mod.Config, device: torch.device, rank: int, world: int
               ) -> FinetuneData:
    """The data of a fine-tuning run (module docstring)."""
    ft, d = cfg.finetune, cfg.data
    if ft.batch_size % world:
        raise ConfigError(f"finetune.batch_size={ft.batch_size} (the global batch) must be "
                          f"divisible by the {world} processes")
    local = ft.batch_size // world
    if (ft.mixup > 0 or ft.cutmix > 0) and local % 2:
        raise ConfigError(f"finetune.mixup / cutmix mix each batch with its reverse: the batch "
                          f"per process ({local}) must be even; change finetune.batch_size")
    full = dataset_from_config(d, "train", seed=cfg.run.seed)
    num_classes = int(getattr(full, "num_classes", 0) or 0)
    if num_classes < 2:
        raise UserError(f"dataset '{d.name}' has {num_classes} classes; fine-tuning needs at "
                        f"least 2 (class folders for an image folder)")
    train = labelled_subset(full, d.name, ft.label_fraction, ft.subset_file, cfg.run.seed)
    if bool((train.labels < 0).any()):
        train = train.subset(torch.nonzero(train.labels >= 0).flatten())
    test = dataset_from_config(d, "test", seed=cfg.run.seed)
    sampler = FullBatchSampler(len(train), local, seed=cfg.run.seed, rank=rank,
                               world_size=world)
    mean, std = normalization(d.name, d.channels, d.mean, d.std)
    transform = None
    if ft.augment == "timm":
        tf = timm_train_transform(
            d.image_size, list(mean) * (3 // len(mean)), list(std) * (3 // len(std)),
            scale=ft.crop_scale, flip_p=ft.flip_p, interpolation=ft.interpolation,
            rand_augment=ft.rand_augment, random_erasing=ft.random_erasing)
        images = TimmTrainImages(train, tf, d.channels, dataset_info(d.name).files,
                                 cfg.run.seed)
        loader = build_loader(images, local, train=False, sampler=EpochKeys(sampler),
                              num_workers=d.num_workers, pin_memory=device.type == "cuda",
                              seed=cfg.run.seed)
    else:
        transform = CropFlip(d.image_size, mean, std, d.channels, scale=ft.crop_scale,
                             flip_p=ft.flip_p, resample=ft.interpolation).to(device)
        loader = build_loader(train, local, train=False, sampler=sampler,
                              num_workers=d.num_workers, pin_memory=device.type == "cuda",
                              seed=cfg.run.seed)
    classes = list(getattr(full, "classes", None) or range(num_classes))
    return FinetuneData(train, test, num_classes, classes, loader, sampler, local,
                        sampler.per_rank // local, transform,
                        eval_transform_from_config(cfg).to(device))


def check_command(checkpoint: Optional[str], baseline: Optional[str]) -> None:
    if baseline is not None and baseline not in BASELINES:
        raise UserError(f"unknown baseline '{baseline}'; use {', '.join(BASELINES)}")
    if checkpoint is None and baseline is None:
        raise UserError("run_finetune.py needs --checkpoint PATH (a last.pt, backbone.pt or a "
                        "checkpoint of the field), or --baseline random-init")
