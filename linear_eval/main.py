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

import dataclasses
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.tensorboard import SummaryWriter

from linear_eval.cached import cached_probe
from linear_eval.standard import standard_probe
from linear_eval.transforms import ProbeTrainTransform
from sslkit import config as config_mod
from sslkit.augment import CenterView, eval_transform_from_config
from sslkit.checkpoint import load_into
from sslkit.data import build_loader, dataset_from_config, normalization, tensor_pair
from sslkit.errors import CheckpointError, UserError
from sslkit.export import read_backbone_source, run_dir_of
from sslkit.features import extract_features
from sslkit.knn import knn_evaluate
from sslkit.models.backbones import backbone_from_config
from sslkit.runtime import configure_cpu, resolve_device, resolve_precision, seed_everything

BASELINES = ("raw-pixels", "random-init")


# --------------------------------------------------------------------------- config / model
def resolve_config(checkpoint: str | None, config_path: str | None,
                   overrides: list[str] | None, baseline: str | None
                   ) -> tuple[config_mod.Config, dict | None]:
    """``(config, backbone state dict or None)`` (see the module docstring)."""
    state, ckpt_cfg = None, None
    if checkpoint is not None:
        state, ckpt_cfg = read_backbone_source(checkpoint)
    if config_path is not None:
        data, source = config_mod.read_yaml_file(config_path), str(config_path)
    elif ckpt_cfg is not None:
        data, source = ckpt_cfg, f"the config of {checkpoint}"
    elif checkpoint is not None:
        raise CheckpointError(f"'{checkpoint}' has no config (no config.yaml beside it); pass "
                              f"the run's config with --config PATH")
    else:
        path = config_mod.demo_config_path()
        data, source = config_mod.read_yaml_file(path), str(path)
    return config_mod.build(data, overrides, source=source), state


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
                if m.backbone.startswith("resnet") else f"{m.backbone}, patch {m.patch_size}")
        load_into(backbone, state, str(checkpoint),
                  what=f"backbone ({arch}, {cfg.data.channels} input channels)")
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone, feat_dim


def output_dir(cfg: config_mod.Config, checkpoint: str | None, baseline: str | None,
               output: str | None) -> Path:
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
    pair = tensor_pair(ds)
    if pair is not None:
        images, labels = pair
        keep = labels >= 0  # STL-10 marks unlabeled images with -1
        return (images, labels) if bool(keep.all()) else (images[keep], labels[keep])
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
@dataclasses.dataclass
class Setup:
    """Everything an evaluation needs, built from the command line."""

    cfg: config_mod.Config
    device: torch.device
    precision: str
    backbone: nn.Module
    feat_dim: int
    out_dir: Path
    train_ds: Any
    test_ds: Any
    num_classes: int
    eval_tf: CenterView
    train_tf: ProbeTrainTransform
    train_src: Any
    test_src: Any


def prepare(checkpoint: str | None, config_path: str | None, overrides: list[str] | None,
            baseline: str | None, output: str | None) -> Setup:
    """Check the command line, then build config, device, model, data and transforms."""
    if baseline is not None and baseline not in BASELINES:
        raise UserError(f"unknown baseline '{baseline}'; use one of {', '.join(BASELINES)}")
    if checkpoint is None and baseline is None:
        raise UserError("run_lincls.py needs --checkpoint PATH (a last.pt or backbone.pt), "
                        "or --baseline raw-pixels|random-init with --config")
    cfg, state = resolve_config(checkpoint, config_path, overrides, baseline)
    configure_cpu(cfg.run)
    seed_everything(cfg.run.seed)
    device = resolve_device(cfg.run)
    precision = resolve_precision(cfg.run, device)
    backbone, feat_dim = build_model(cfg, state, checkpoint, baseline)
    backbone.to(device)
    out_dir = output_dir(cfg, checkpoint, baseline, output)
    train_ds = dataset_from_config(cfg.data, "train", seed=cfg.run.seed)
    test_ds = dataset_from_config(cfg.data, "test", seed=cfg.run.seed)
    num_classes = int(getattr(train_ds, "num_classes", 0) or 0)
    if num_classes < 2:
        raise UserError(f"dataset '{cfg.data.name}' has {num_classes} classes; linear "
                        f"evaluation needs at least 2")
    mean, std = normalization(cfg.data.name, cfg.data.channels, cfg.data.mean, cfg.data.std)
    eval_tf = eval_transform_from_config(cfg).to(device)
    train_tf = ProbeTrainTransform(cfg.data.image_size, mean, std, cfg.data.channels).to(device)
    bs = cfg.eval.batch_size
    return Setup(cfg, device, precision, backbone, feat_dim, out_dir, train_ds, test_ds,
                 num_classes, eval_tf, train_tf,
                 _data_source(train_ds, bs, cfg, device, train=False),
                 _data_source(test_ds, bs, cfg, device, train=False))


def knn_sweep(s: Setup, ftrain: torch.Tensor, ytrain: torch.Tensor, ftest: torch.Tensor,
              ytest: torch.Tensor) -> tuple[list[dict], dict]:
    """kNN over eval.knn_ks x eval.knn_ts (plus the headline k, T) from one search; returns
    (the sweep, the headline row)."""
    ev = s.cfg.eval
    ks = sorted(set(ev.knn_ks) | {ev.knn_k})
    ts = sorted(set(ev.knn_ts) | {ev.knn_t})
    sweep = [r.as_dict() for r in knn_evaluate(ftrain.to(s.device), ytrain, ftest.to(s.device),
                                               ytest, s.num_classes, ks, ts)]
    return sweep, next(r for r in sweep if r["k"] == ev.knn_k and r["t"] == ev.knn_t)


def linear_probe(s: Setup, ftrain: torch.Tensor, ytrain: torch.Tensor, ftest: torch.Tensor,
                 ytest: torch.Tensor, writer) -> dict:
    """The probe of ``eval.mode``: cached (on the features) or standard (on the images)."""
    ev, seed, progress = s.cfg.eval, s.cfg.run.seed, s.cfg.run.progress
    if ev.mode == "cached":
        aug = []
        for c in range(ev.aug_copies):
            f, _ = extract_features(s.backbone, s.train_src, s.device, s.precision, s.train_tf,
                                    ev.batch_size, progress, f"features (aug {c + 1})")
            aug.append(f)
        return cached_probe(ftrain, ytrain, ftest, ytest, s.num_classes, ev, aug_features=aug,
                            seed=seed, device=s.device, progress=progress, writer=writer)
    std_train = s.train_src if isinstance(s.train_src, tuple) else _data_source(
        s.train_ds, ev.batch_size, s.cfg, s.device, train=True)
    return standard_probe(s.backbone, s.feat_dim, s.num_classes, std_train, s.test_src, ev,
                          train_transform=s.train_tf, test_transform=s.eval_tf,
                          device=s.device, precision=s.precision, seed=seed,
                          progress=progress, writer=writer)


def _log_results(writer, s: Setup, probe: dict, sweep: list[dict], head: dict,
                 ftest: torch.Tensor, ytest: torch.Tensor) -> int:
    """Final scalars and the embedding projector; returns the number of embedded images."""
    for name, value in (("linear_top1", probe["linear_top1"]),
                        ("linear_top5", probe["linear_top5"]),
                        ("knn_top1", head["top1"]), ("knn_top5", head["top5"])):
        writer.add_scalar(f"lincls/{name}", value, 0)
    for r in sweep:
        writer.add_scalar(f"lincls/knn_top1/k={r['k']},t={r['t']:g}", r["top1"], 0)
    return log_embedding(writer, s.test_ds, ftest, ytest, s.cfg.eval.embedding_samples,
                         s.eval_tf, s.cfg.run.seed)


def run_lincls(checkpoint: str | None = None, config_path: str | None = None,
               overrides: list[str] | None = None, baseline: str | None = None,
               output: str | None = None) -> dict:
    """Evaluate and write ``eval.json``; returns its content (see the module docstring)."""
    t_start = time.perf_counter()
    s = prepare(checkpoint, config_path, overrides, baseline, output)
    cfg, ev = s.cfg, s.cfg.eval
    try:
        s.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output directory {s.out_dir} ({e.strerror}); pass "
                        f"--output DIR") from None
    writer = SummaryWriter(str(s.out_dir / "tb" / "lincls")) if cfg.run.tensorboard else None
    print(f"lincls: {baseline or 'checkpoint'} on {cfg.data.name} ({len(s.train_ds)} train / "
          f"{len(s.test_ds)} test, {s.num_classes} classes), "
          f"{'pixels' if baseline == 'raw-pixels' else cfg.model.backbone} ({s.feat_dim}-d), "
          f"{s.device.type}/{s.precision}, mode={ev.mode}", flush=True)
    timings, embedded = {}, 0
    try:
        # Frozen features of the eval view: the kNN bank / queries (and the cached probe).
        t0 = time.perf_counter()
        ftrain, ytrain = extract_features(s.backbone, s.train_src, s.device, s.precision,
                                          s.eval_tf, ev.batch_size, cfg.run.progress,
                                          "features (train)")
        ftest, ytest = extract_features(s.backbone, s.test_src, s.device, s.precision,
                                        s.eval_tf, ev.batch_size, cfg.run.progress,
                                        "features (test)")
        timings["features_s"], t0 = time.perf_counter() - t0, time.perf_counter()
        sweep, head = knn_sweep(s, ftrain, ytrain, ftest, ytest)
        timings["knn_s"], t0 = time.perf_counter() - t0, time.perf_counter()
        probe = linear_probe(s, ftrain, ytrain, ftest, ytest, writer)
        timings["probe_s"] = time.perf_counter() - t0
        if writer is not None:
            embedded = _log_results(writer, s, probe, sweep, head, ftest, ytest)
    finally:
        if writer is not None:
            writer.close()
    timings["total_s"] = time.perf_counter() - t_start
    result = {
        "linear_top1": probe["linear_top1"], "linear_top5": probe["linear_top5"],
        "knn_top1": head["top1"], "knn_top5": head["top5"],
        "mode": ev.mode, "knn_k": ev.knn_k, "knn_t": ev.knn_t, "knn": sweep,
        "probe": probe,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "baseline": baseline,
        "dataset": {"name": cfg.data.name, "num_train": int(ftrain.shape[0]),
                    "num_test": int(ftest.shape[0]), "num_classes": s.num_classes,
                    "image_size": cfg.data.image_size, "channels": cfg.data.channels},
        "backbone": {"name": "pixels" if baseline == "raw-pixels" else cfg.model.backbone,
                     "feat_dim": s.feat_dim},
        "device": str(s.device), "precision": s.precision, "embedding_samples": embedded,
        "timings": timings,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
    }
    path = s.out_dir / "eval.json"
    write_json_atomic(result, path)
    _print_result(result, path, writer is not None)
    return result


def _print_result(result: dict, path: Path, tensorboard: bool) -> None:
    probe, sweep, ev = result["probe"], result["knn"], result["config"]["eval"]
    sel = probe["selected"]
    best = max(sweep, key=lambda r: r["top1"])
    print(f"  kNN k={ev['knn_k']} T={ev['knn_t']:g}: top-1 {result['knn_top1']:.2f}  top-5 "
          f"{result['knn_top5']:.2f}   (best of sweep: k={best['k']} T={best['t']:g} "
          f"{best['top1']:.2f})")
    print(f"  linear ({ev['mode']}, lr={sel['lr']:g}, wd={sel['wd']:g}, {ev['epochs']} epochs): "
          f"top-1 {probe['linear_top1']:.2f}  top-5 {probe['linear_top5']:.2f}")
    print(f"  wrote {path}" + (f"; TensorBoard: {path.parent / 'tb'}" if tensorboard else "")
          + f"  ({result['timings']['total_s']:.1f} s)", flush=True)
