"""The ``run_lincls.py`` driver: kNN + linear probe of a pretrained backbone, or of a baseline.

1. :func:`linear_eval.setup.prepare`: config, model, data, transforms, output directory.
2. Frozen features of the eval view for the train split (the kNN bank, the cached probe) and
   the test split, split over the processes under torchrun and gathered in order.
3. kNN over a k x T sweep from one search, and the cached probe: on the gathered features,
   once (rank 0). The standard probe trains on every process (DDP, global batch
   ``eval.batch_size``, LR scaled by it as in pretraining).
4. :mod:`linear_eval.report`: ``eval.json`` (the evaluation just made, plus one kept entry
   per evaluation kind), TensorBoard, the printed summary.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from linear_eval.cached import cached_probe
from linear_eval.common import class_hits, group_accuracy, per_class_accuracy, shot_groups
from linear_eval.report import (log_results, merge_results, now, print_result, result_key,
                                write_json_atomic, writers)
from linear_eval.setup import Setup, data_source, prepare, probe_train_source, shard_source
from linear_eval.sharding import extract_sharded
from linear_eval.standard import standard_probe
from sslkit import distributed as dist
from sslkit.errors import UserError
from sslkit.evaluation.features import extract_features
from sslkit.knn import knn_evaluate, knn_predict


def features(s: Setup, ds, transform, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of ``ds`` through ``transform``, all processes' shares, in order."""
    ev, progress = s.cfg.eval, s.cfg.run.progress and dist.is_main_process()
    return extract_sharded(
        lambda src: extract_features(s.backbone, src, s.device, s.precision, transform,
                                     ev.batch_size, progress, desc),
        ds, lambda d: data_source(d, ev.batch_size, s.cfg, s.device, train=False),
        ev.batch_size)


def knn_sweep(s: Setup, ftrain: torch.Tensor, ytrain: torch.Tensor, ftest: torch.Tensor,
              ytest: torch.Tensor) -> tuple[list[dict], dict]:
    """kNN over eval.knn_ks x eval.knn_ts (plus the headline k, T) from one search; returns
    (the sweep, the headline row with its per-class top-1 as ``per_class``)."""
    ev = s.cfg.eval
    ks = sorted(set(ev.knn_ks) | {ev.knn_k})
    ts = sorted(set(ev.knn_ts) | {ev.knn_t})
    sweep = [r.as_dict() for r in knn_evaluate(ftrain.to(s.device), ytrain, ftest.to(s.device),
                                               ytest, s.num_classes, ks, ts)]
    head = dict(next(r for r in sweep if r["k"] == ev.knn_k and r["t"] == ev.knn_t))
    scores = knn_predict(ftrain, ytrain, ftest, s.num_classes, ev.knn_k, ev.knn_t)
    head["per_class"] = per_class_accuracy(*class_hits(scores.argmax(1), ytest, s.num_classes))
    return sweep, head


def per_class_report(s: Setup, ytrain: torch.Tensor, head: dict, probe: dict) -> dict:
    """``per_class`` (class names, training counts, kNN and linear top-1 per class) and, for a
    long-tailed training split, the many / medium / few-shot group accuracies."""
    counts = torch.bincount(ytrain[ytrain >= 0], minlength=s.num_classes).tolist()
    names = list(getattr(s.train_ds, "classes", None) or range(s.num_classes))
    out = {"per_class": {"classes": [str(n) for n in names], "train_counts": counts,
                         "knn": head["per_class"], "linear": probe["per_class"]}}
    if s.cfg.data.long_tail is not None:
        many, few = s.cfg.eval.shot_groups
        for group, classes in shot_groups(counts, many, few).items():
            out[group] = {"knn": group_accuracy(head["per_class"], classes),
                          "linear": group_accuracy(probe["per_class"], classes),
                          "classes": [str(names[c]) for c in classes]}
    return out


def linear_probe(s: Setup, ftrain: torch.Tensor, ytrain: torch.Tensor, ftest: torch.Tensor,
                 ytest: torch.Tensor, writer) -> dict:
    """The probe of ``eval.mode``: cached (on the features, rank 0 alone, then shared) or
    standard (on the images, every process)."""
    ev, seed = s.cfg.eval, s.cfg.run.seed
    progress = s.cfg.run.progress and dist.is_main_process()
    if ev.mode == "cached":
        aug = [features(s, s.train_ds, s.train_tf, f"features (aug {c + 1})")[0]
               for c in range(ev.aug_copies)]
        probe = None
        if dist.is_main_process():
            probe = cached_probe(ftrain, ytrain, ftest, ytest, s.num_classes, ev,
                                 aug_features=aug, seed=seed, device=s.device,
                                 progress=progress, writer=writer)
        return dist.broadcast_object(probe)
    return standard_probe(s.backbone, s.feat_dim, s.num_classes,
                          probe_train_source(s.train_ds, s.cfg, s.device),
                          shard_source(s.test_ds, s.cfg, s.device), ev,
                          train_transform=s.train_tf, test_transform=s.eval_tf,
                          device=s.device, precision=s.precision, seed=seed,
                          progress=progress, writer=writer)


def run_lincls(checkpoint: str | None = None, config_path: str | None = None,
               overrides: list[str] | None = None, baseline: str | None = None,
               output: str | None = None) -> dict:
    """Evaluate and write ``eval.json``; returns its content (see the module docstring)."""
    try:
        return _run(checkpoint, config_path, overrides, baseline, output)
    finally:
        dist.destroy_distributed()


def _run(checkpoint, config_path, overrides, baseline, output) -> dict:
    t_start = time.perf_counter()
    s = prepare(checkpoint, config_path, overrides, baseline, output)
    cfg, ev, main = s.cfg, s.cfg.eval, dist.is_main_process()
    if main:
        try:
            s.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the output directory {s.out_dir} ({e.strerror}); "
                            f"pass --output DIR") from None
        print(f"lincls: {baseline or 'checkpoint'} on {cfg.data.name} ({len(s.train_ds)} "
              f"train / {len(s.test_ds)} test, {s.num_classes} classes), "
              f"{'pixels' if baseline == 'raw-pixels' else cfg.model.backbone} "
              f"({s.feat_dim}-d), {s.device.type}/{s.precision}, mode={ev.mode}, "
              f"{dist.get_world_size()} process(es)", flush=True)
        print(f"compute: {s.device.type}, {s.precision} ({s.precision_choice.reason})"
              + (f"\n{s.precision_choice.note}" if s.precision_choice.note else ""), flush=True)
    probe_w, final_w = writers(s.out_dir, main and cfg.run.tensorboard)
    timings, embedded = {}, 0
    try:
        t0 = time.perf_counter()
        ftrain, ytrain = features(s, s.train_ds, s.eval_tf, "features (train)")
        ftest, ytest = features(s, s.test_ds, s.eval_tf, "features (test)")
        timings["features_s"], t0 = time.perf_counter() - t0, time.perf_counter()
        sweep, head = dist.broadcast_object(
            knn_sweep(s, ftrain, ytrain, ftest, ytest) if main else None)
        timings["knn_s"], t0 = time.perf_counter() - t0, time.perf_counter()
        probe = linear_probe(s, ftrain, ytrain, ftest, ytest, probe_w)
        timings["probe_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        result = _result(s, checkpoint, baseline, probe, sweep, head, ftrain, ftest, timings)
        result.update(per_class_report(s, ytrain, head, probe))
        if main:
            embedded = log_results(probe_w, final_w, result, s.test_ds, ftest, ytest,
                                   ev.embedding_samples, s.eval_tf, cfg.run.seed)
    finally:
        for w in (probe_w, final_w):
            if w is not None:
                w.close()
    result["embedding_samples"] = embedded
    path = s.out_dir / "eval.json"
    if main:
        result = merge_results(path, result, result_key(ev.mode, overrides))
        write_json_atomic(result, path)
        print_result(result, path, probe_w is not None)
    dist.barrier()
    return result


def _result(s: Setup, checkpoint, baseline, probe: dict, sweep: list[dict], head: dict,
            ftrain: torch.Tensor, ftest: torch.Tensor, timings: dict) -> dict:
    cfg, ev = s.cfg, s.cfg.eval
    return {
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
        "device": str(s.device), "precision": s.precision,
        "processes": dist.get_world_size(), "timings": timings, "created": now(),
        "config": cfg.to_dict(),
    }
