"""What ``run_lincls.py`` leaves behind: ``eval.json``, TensorBoard, the printed summary.

``eval.json`` (written atomically, by rank 0 only) holds at the top level the evaluation just
made: ``linear_top1``, ``linear_top5``, ``knn_top1``, ``knn_top5`` (percent), ``mode``, ``knn``
(the k x T sweep), ``probe`` (per-(lr, wd) table, selection, history), ``checkpoint``,
``baseline``, ``dataset``, ``backbone``, ``timings``, ``config``, ``per_class`` (class names,
training counts, kNN and linear top-1 per class) and, for a long-tailed training split
(``data.long_tail``), ``many`` / ``medium`` / ``few`` (the mean per-class top-1 of the classes
with more than ``eval.shot_groups[0]`` training images, between, and fewer than
``eval.shot_groups[1]``). Its ``results`` keeps one
entry per evaluation kind, so that no evaluation overwrites another: the key is the probe
mode, followed by the ``--set`` overrides that change what is measured (e.g. ``cached`` and
``cached data.mean=[0] data.std=[1]``); an entry holds the four accuracies, the probe's
selection and when it was made.

TensorBoard: into ``<directory>/tb`` the four final accuracies as ``3_eval/*`` (what the
HParams tab of the pretraining run shows), and into ``<directory>/tb/lincls`` the probe's
curves, the LR grid and kNN sweep as text tables, and the embedding projector (test images,
class names, thumbnails). Re-evaluating replaces both.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from sslkit.errors import UserError
from sslkit.train.metrics import TB_EVAL

EVAL_SUFFIX = ".sslkit-eval"  # the file name suffix of run_lincls's events in tb/


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


def result_key(mode: str, overrides: list[str] | None) -> str:
    """The ``results`` key of an evaluation: the mode and the measuring --set overrides (the
    run.* keys, e.g. the device, and eval.mode itself do not change what is measured)."""
    kept = [o for o in (overrides or []) if not o.startswith(("run.", "eval.mode="))]
    return " ".join([mode, *kept])


def merge_results(path: Path, result: dict, key: str) -> dict:
    """``result`` with the ``results`` of the eval.json already at ``path`` and this
    evaluation's entry under ``key``."""
    results: dict = {}
    try:
        previous = json.loads(path.read_text())
        if isinstance(previous.get("results"), dict):
            results = previous["results"]
    except (OSError, ValueError, AttributeError):
        pass
    results[key] = {name: result[name] for name in ("linear_top1", "linear_top5", "knn_top1",
                                                      "knn_top5", "mode", "created")}
    results[key]["selected"] = result["probe"].get("selected")
    for group in ("many", "medium", "few"):
        if group in result:
            results[key][group] = {k: result[group][k] for k in ("knn", "linear")}
    return {**result, "results": results}


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
                         label_img=_thumbnails(ds, idx, 32, eval_tf), tag="test")
    return n


def writers(out_dir: Path, enabled: bool) -> tuple[Any, Any]:
    """(probe writer into tb/lincls, final-scalars writer into tb/), or (None, None). What an
    earlier evaluation wrote there is removed first, so re-evaluating replaces it."""
    if not enabled:
        return None, None
    tb = out_dir / "tb"
    shutil.rmtree(tb / "lincls", ignore_errors=True)
    for old in tb.glob(f"*{EVAL_SUFFIX}"):
        old.unlink()
    return (SummaryWriter(str(tb / "lincls")),
            SummaryWriter(str(tb), filename_suffix=EVAL_SUFFIX))


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float)
                                             else str(r[c]) for c in columns) + " |"
                            for r in rows)


def log_results(probe_writer, final_writer, result: dict, ds, ftest: torch.Tensor,
                ytest: torch.Tensor, samples: int, eval_tf, seed: int) -> int:
    """The final accuracies, the LR grid and kNN sweep tables, the projector; returns the
    number of embedded images."""
    if final_writer is not None:
        for name in ("linear_top1", "linear_top5", "knn_top1", "knn_top5"):
            final_writer.add_scalar(f"{TB_EVAL}/{name}", result[name], 0)
    if probe_writer is None:
        return 0
    probe = result["probe"]
    columns = [c for c in ("lr", "wd", "val_top1", "val_top5", "test_top1", "test_top5",
                           "diverged") if probe["table"] and c in probe["table"][0]]
    probe_writer.add_text(f"{TB_EVAL}/probe_grid", _table(probe["table"], columns), 0)
    probe_writer.add_text(f"{TB_EVAL}/knn_sweep", _table(result["knn"], ["k", "t", "top1", "top5"]), 0)
    pc = result["per_class"]
    rows = [{"class": c, "train images": n, "knn top-1": k, "linear top-1": lin}
            for c, n, k, lin in zip(pc["classes"], pc["train_counts"], pc["knn"], pc["linear"])]
    probe_writer.add_text(f"{TB_EVAL}/per_class", _table(rows, list(rows[0])), 0)
    for group in ("many", "medium", "few"):
        if group in result and final_writer is not None:
            for kind in ("knn", "linear"):
                final_writer.add_scalar(f"{TB_EVAL}/{group}_shot_{kind}", result[group][kind], 0)
    return log_embedding(probe_writer, ds, ftest, ytest, samples, eval_tf, seed)


def print_result(result: dict, path: Path, tensorboard: bool) -> None:
    probe, sweep, ev = result["probe"], result["knn"], result["config"]["eval"]
    sel = probe["selected"]
    best = max(sweep, key=lambda r: r["top1"])
    print(f"  kNN k={ev['knn_k']} T={ev['knn_t']:g}: top-1 {result['knn_top1']:.2f}  top-5 "
          f"{result['knn_top5']:.2f}   (best of sweep: k={best['k']} T={best['t']:g} "
          f"{best['top1']:.2f})")
    print(f"  linear ({ev['mode']}, lr={sel['lr']:g}, wd={sel['wd']:g}, {ev['epochs']} epochs): "
          f"top-1 {probe['linear_top1']:.2f}  top-5 {probe['linear_top5']:.2f}")
    if "few" in result:
        print("  " + "   ".join(f"{g}-shot: kNN {result[g]['knn']:.2f} linear "
                                f"{result[g]['linear']:.2f}" for g in ("many", "medium", "few")))
    print(f"  wrote {path}" + (f"; TensorBoard: {path.parent / 'tb'}" if tensorboard else "")
          + f"  ({result['timings']['total_s']:.1f} s)", flush=True)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
