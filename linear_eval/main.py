"""The ``run_lincls.py`` driver: kNN + linear probe of a pretrained backbone, or of a baseline.

Config
    base = ``--config`` if given, else the checkpoint's config (``last.pt`` carries it;
    ``backbone.pt`` takes ``config.yaml`` beside it), then ``--set`` overrides. A baseline
    without ``--checkpoint`` and ``--config`` uses ``configs/demo.yaml`` (as run_pretrain.py
    does). The dataset's "train" split trains the probe / is the kNN bank, "test" is reported.

Models
    checkpoint: the configured backbone with the checkpoint's weights (``load_into``: an
    architecture mismatch is a one-line CheckpointError naming it). ``--baseline random-init``:
    the configured backbone, randomly initialised with ``run.seed``. ``--baseline
    raw-pixels``: features = the flattened, normalised pixels of the eval view.

Outputs (``eval.json``, written atomically)
    into the checkpoint's run directory (``run_dir_of``), or ``--output``; a baseline goes to
    ``<that directory or run.output_dir>/baseline_<name>/`` so it never overwrites a model's
    eval.json. Keys: ``linear_top1``, ``linear_top5``, ``knn_top1``, ``knn_top5`` (percent),
    ``mode``, ``knn`` (the k x T sweep), ``probe`` (per-(lr, wd) table, selection, history),
    ``checkpoint``, ``baseline``, ``dataset``, ``backbone``, ``timings``, ``config``.
    TensorBoard: scalars and an embedding projector (test sample, labels, thumbnails) under
    ``<directory>/tb/lincls``.
"""
from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from linear_eval.features import ProbeTrainTransform, extract_features
from linear_eval.probe import cached_probe, standard_probe
from sslkit import config as config_mod
from sslkit.errors import CheckpointError, UserError

BASELINES = ("raw-pixels", "random-init")


# --------------------------------------------------------------------------- config / model
def resolve_config(checkpoint: str | None, config_path: str | None,
                   overrides: list[str] | None, baseline: str | None
                   ) -> tuple[config_mod.Config, dict | None]:
    """``(config, backbone state dict or None)`` (see the module docstring)."""
    state, ckpt_cfg = None, None
    if checkpoint is not None:
        from sslkit.export import read_backbone_source
        state, ckpt_cfg = read_backbone_source(checkpoint)
    if config_path is not None:
        data, source = config_mod.read_yaml_file(config_path), str(config_path)
    elif ckpt_cfg is not None:
        data, source = ckpt_cfg, f"the config of {checkpoint}"
    elif checkpoint is not None:
        raise CheckpointError(f"'{checkpoint}' has no config (no config.yaml beside it); pass "
                              f"the run's config with --config PATH")
    else:
        from sslkit.cli import demo_config_path
        path = demo_config_path()
        data, source = config_mod.read_yaml_file(path), str(path)
    return config_mod.build(data, overrides, source=source), state


def build_model(cfg: config_mod.Config, state: dict | None, checkpoint: str | None,
                baseline: str | None) -> tuple[nn.Module, int]:
    """``(frozen feature extractor, feature dim)`` for the checkpoint or the baseline."""
    if baseline == "raw-pixels":
        s = cfg.data.image_size
        return nn.Flatten(), cfg.data.channels * s * s
    from sslkit.checkpoint import load_into
    from sslkit.models.backbones import backbone_from_config
    torch.manual_seed(cfg.run.seed)  # random-init: the seeded initialisation
    backbone, feat_dim = backbone_from_config(cfg)
    if baseline is None:
        if state is None:
            raise CheckpointError("no checkpoint given; pass --checkpoint PATH or --baseline")
        m = cfg.model
        arch = (f"{m.backbone}, width {m.width}, cifar_stem={str(m.cifar_stem).lower()}"
                if m.backbone.startswith("resnet") else f"{m.backbone}, patch {m.patch_size}")
        load_into(backbone, state, str(checkpoint),
                  what=f"backbone ({arch}, {cfg.data.channels} input channels)")
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone, feat_dim


def output_dir(cfg: config_mod.Config, checkpoint: str | None, baseline: str | None,
               output: str | None) -> Path:
    from sslkit.export import run_dir_of
    if output is not None:
        base = Path(output)
    elif checkpoint is not None:
        base = run_dir_of(checkpoint)
    else:
        base = Path(cfg.run.output_dir)
    return base / f"baseline_{baseline.replace('-', '_')}" if baseline else base


def write_json_atomic(obj: Any, path: Path) -> None:
    """JSON to ``path`` via a temporary file, fsync and rename (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, allow_nan=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise UserError(f"could not write {path} ({e.strerror or e}); check the output "
                        f"directory") from None


# --------------------------------------------------------------------------- data
def _data_source(ds, batch_size: int, cfg: config_mod.Config, device: torch.device, *,
                 train: bool):
    """In-memory datasets as an (images, labels) pair; others as a loader."""
    images, labels = getattr(ds, "images", None), getattr(ds, "labels", None)
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
        keep = labels >= 0  # STL-10 marks unlabeled images with -1
        return (images, labels) if bool(keep.all()) else (images[keep], labels[keep])
    from sslkit.data import build_loader
    return build_loader(ds, batch_size, train=train, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda", seed=cfg.run.seed)


def _thumbnails(ds, indices: list[int], size: int, eval_tf) -> torch.Tensor:
    """(n, 3, s, s) float [0, 1] thumbnails of the eval view (for the projector sprite)."""
    imgs = torch.stack([ds[i][0] for i in indices])
    imgs = eval_tf.denormalize(eval_tf(imgs.to(eval_tf.mean.device))).cpu()
    if imgs.shape[-1] > size:
        imgs = torch.nn.functional.interpolate(imgs, size=(size, size), mode="bilinear",
                                               antialias=True, align_corners=False)
    if imgs.shape[1] == 1:
        imgs = imgs.repeat(1, 3, 1, 1)
    return imgs.clamp(0, 1)


def log_embedding(writer, ds, features: torch.Tensor, labels: torch.Tensor, n: int,
                  eval_tf, seed: int) -> int:
    """TensorBoard projector: ``n`` seeded-random test images (features, labels, thumbnails)."""
    n = min(n, features.shape[0])
    if writer is None or n <= 0:
        return 0
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(features.shape[0], generator=g)[:n].sort().values.tolist()
    classes = getattr(ds, "classes", None)
    meta = [classes[int(labels[i])] if classes else str(int(labels[i])) for i in idx]
    writer.add_embedding(features[idx], metadata=meta,
                         label_img=_thumbnails(ds, idx, 32, eval_tf), tag="lincls/test")
    return n


# --------------------------------------------------------------------------- main
def run_lincls(checkpoint: str | None = None, config_path: str | None = None,
               overrides: list[str] | None = None, baseline: str | None = None,
               output: str | None = None) -> dict:
    """Evaluate and write ``eval.json``; returns its content (see the module docstring)."""
    t_start = time.perf_counter()
    if baseline is not None and baseline not in BASELINES:
        raise UserError(f"unknown baseline '{baseline}'; use one of {', '.join(BASELINES)}")
    if checkpoint is None and baseline is None:
        raise UserError("run_lincls needs --checkpoint PATH (a last.pt or backbone.pt) or "
                        "--baseline raw-pixels|random-init")
    cfg, state = resolve_config(checkpoint, config_path, overrides, baseline)
    from sslkit.data import dataset_from_config, normalization
    from sslkit.engine import (configure_cpu, resolve_device, resolve_precision,
                               seed_everything)

    configure_cpu(cfg.run)
    seed_everything(cfg.run.seed)
    device = resolve_device(cfg.run)
    precision = resolve_precision(cfg.run, device)
    ev, seed = cfg.eval, cfg.run.seed
    backbone, feat_dim = build_model(cfg, state, checkpoint, baseline)
    backbone.to(device)
    out_dir = output_dir(cfg, checkpoint, baseline, output)

    train_ds = dataset_from_config(cfg.data, "train", seed=seed)
    test_ds = dataset_from_config(cfg.data, "test", seed=seed)
    num_classes = int(getattr(train_ds, "num_classes", 0) or 0)
    if num_classes < 2:
        raise UserError(f"dataset '{cfg.data.name}' has {num_classes} classes; linear "
                        f"evaluation needs at least 2")
    mean, std = normalization(cfg.data.name, cfg.data.channels, cfg.data.mean, cfg.data.std)
    from sslkit.augment import eval_transform_from_config
    eval_tf = eval_transform_from_config(cfg).to(device)
    train_tf = ProbeTrainTransform(cfg.data.image_size, mean, std, cfg.data.channels).to(device)
    train_src = _data_source(train_ds, ev.batch_size, cfg, device, train=False)
    test_src = _data_source(test_ds, ev.batch_size, cfg, device, train=False)

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output directory {out_dir} ({e.strerror}); pass "
                        f"--output DIR") from None
    writer = None
    if cfg.run.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out_dir / "tb" / "lincls"))
    progress = cfg.run.progress
    what = baseline or "checkpoint"
    print(f"lincls: {what} on {cfg.data.name} ({len(train_ds)} train / {len(test_ds)} test, "
          f"{num_classes} classes), {'pixels' if baseline == 'raw-pixels' else cfg.model.backbone}"
          f" ({feat_dim}-d), {device.type}/{precision}, mode={ev.mode}", flush=True)

    try:
        # Frozen features of the eval view: the kNN bank / queries (and the cached probe).
        t0 = time.perf_counter()
        ftrain, ytrain = extract_features(backbone, train_src, device, precision, eval_tf,
                                          ev.batch_size, progress, "features (train)")
        ftest, ytest = extract_features(backbone, test_src, device, precision, eval_tf,
                                        ev.batch_size, progress, "features (test)")
        features_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        from sslkit.knn import knn_evaluate
        ks = sorted(set(ev.knn_ks) | {ev.knn_k})
        ts = sorted(set(ev.knn_ts) | {ev.knn_t})
        sweep = [r.as_dict() for r in knn_evaluate(ftrain.to(device), ytrain, ftest.to(device),
                                                   ytest, num_classes, ks, ts)]
        head = next(r for r in sweep if r["k"] == ev.knn_k and r["t"] == ev.knn_t)
        knn_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        if ev.mode == "cached":
            aug = []
            for c in range(ev.aug_copies):
                f, _ = extract_features(backbone, train_src, device, precision, train_tf,
                                        ev.batch_size, progress, f"features (aug {c + 1})")
                aug.append(f)
            probe = cached_probe(ftrain, ytrain, ftest, ytest, num_classes, ev,
                                 aug_features=aug, seed=seed, device=device,
                                 progress=progress, writer=writer)
        else:
            std_train = train_src if isinstance(train_src, tuple) else _data_source(
                train_ds, ev.batch_size, cfg, device, train=True)
            probe = standard_probe(backbone, feat_dim, num_classes, std_train, test_src, ev,
                                   train_transform=train_tf, test_transform=eval_tf,
                                   device=device, precision=precision, seed=seed,
                                   progress=progress, writer=writer)
        probe_s = time.perf_counter() - t0

        embedded = 0
        if writer is not None:
            for name, value in (("linear_top1", probe["linear_top1"]),
                                ("linear_top5", probe["linear_top5"]),
                                ("knn_top1", head["top1"]), ("knn_top5", head["top5"])):
                writer.add_scalar(f"lincls/{name}", value, 0)
            for r in sweep:
                writer.add_scalar(f"lincls/knn_top1/k={r['k']},t={r['t']:g}", r["top1"], 0)
            embedded = log_embedding(writer, test_ds, ftest, ytest, ev.embedding_samples,
                                     eval_tf, seed)
    finally:
        if writer is not None:
            writer.close()

    result = {
        "linear_top1": probe["linear_top1"], "linear_top5": probe["linear_top5"],
        "knn_top1": head["top1"], "knn_top5": head["top5"],
        "mode": ev.mode, "knn_k": ev.knn_k, "knn_t": ev.knn_t, "knn": sweep,
        "probe": probe,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "baseline": baseline,
        "dataset": {"name": cfg.data.name, "num_train": int(ftrain.shape[0]),
                    "num_test": int(ftest.shape[0]), "num_classes": num_classes,
                    "image_size": cfg.data.image_size, "channels": cfg.data.channels},
        "backbone": {"name": "pixels" if baseline == "raw-pixels" else cfg.model.backbone,
                     "feat_dim": feat_dim},
        "device": str(device), "precision": precision, "embedding_samples": embedded,
        "timings": {"features_s": features_s, "knn_s": knn_s, "probe_s": probe_s,
                    "total_s": time.perf_counter() - t_start},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
    }
    path = out_dir / "eval.json"
    write_json_atomic(result, path)
    sel = probe["selected"]
    best = max(sweep, key=lambda r: r["top1"])
    print(f"  kNN k={ev.knn_k} T={ev.knn_t:g}: top-1 {head['top1']:.2f}  top-5 "
          f"{head['top5']:.2f}   (best of sweep: k={best['k']} T={best['t']:g} "
          f"{best['top1']:.2f})")
    print(f"  linear ({ev.mode}, lr={sel['lr']:g}, wd={sel['wd']:g}, {ev.epochs} epochs): "
          f"top-1 {probe['linear_top1']:.2f}  top-5 {probe['linear_top5']:.2f}")
    print(f"  wrote {path}" + (f"; TensorBoard: {out_dir / 'tb'}" if writer is not None else "")
          + f"  ({result['timings']['total_s']:.1f} s)", flush=True)
    return result
