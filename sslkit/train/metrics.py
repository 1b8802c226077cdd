"""What a run reports: the metrics log (``metrics.jsonl`` + TensorBoard, rank 0 only), the
progress on the console, and the summary printed at the end of pretraining.

Console: a live tqdm bar when the stream is a terminal; otherwise (a SLURM log file, a pipe)
one plain line per ``run.log_every_steps`` steps with step, epoch, loss, LR, img/s and ETA,
and no carriage returns. A terminal that reports 0 columns gets a fixed width of 100.

TensorBoard groups are numbered so that they sort in reading order: ``1_train`` (the
training curves), ``2_online`` (the online kNN and linear probe), ``3_eval``
(run_lincls's results).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import IO, Optional, Sequence

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary
from tqdm import tqdm

TB_TRAIN, TB_ONLINE, TB_EVAL = "1_train", "2_online", "3_eval"
TB_HEALTH = "health"  # the collapse signals (sslkit.train.health) and rollback notes


def is_terminal(stream: IO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(total: Optional[int], desc: str, unit: str, enabled: bool = True,
                 leave: bool = False, initial: int = 0, stream: IO | None = None):
    """A tqdm bar on a terminal (``stream``, default stderr), else None: a log file gets no
    carriage-return updates. A terminal that reports 0 columns gets 100."""
    stream = stream if stream is not None else sys.stderr
    if not enabled or not is_terminal(stream):
        return None
    cols = shutil.get_terminal_size((100, 20)).columns
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=stream,
                dynamic_ncols=cols > 0, ncols=None if cols > 0 else 100, mininterval=1.0)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """Training progress on stdout (pretraining, fine-tuning: ``desc``): a tqdm bar on a
    terminal, plain lines otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool, stream: IO | None = None,
                 desc: str = "pretrain"):
        self.total, self.start, self.t0 = total, initial, time.time()
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled
        self.bar = progress_bar(total, desc, "step", enabled, leave=True,
                                initial=initial, stream=self.stream)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def log(self, rec: dict) -> None:
        """A logged training record (step, epoch, loss, lr, img_per_s)."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['img_per_s']:.0f}")
        elif self.enabled:
            done = rec["step"] - self.start
            eta = (time.time() - self.t0) / done * (self.total - rec["step"]) if done else 0.0
            print(f"step {rec['step']}/{self.total}  epoch {rec['epoch']:.2f}  loss "
                  f"{rec['loss']:.4f}  lr {rec['lr']:.4g}  {rec['img_per_s']:.0f} img/s  "
                  f"ETA {_duration(eta)}", file=self.stream, flush=True)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        elif self.enabled:
            print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        """A ``warning:`` line, shown with progress or without (past a terminal's bar)."""
        if self.bar is not None:
            self.bar.write(f"warning: {message}")
        else:
            print(f"warning: {message}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line) + TensorBoard scalars; rank 0 only.

    On resume (``start_step > 0``) the lines a killed run wrote past the checkpoint are
    dropped and TensorBoard purges the events after ``start_step``, so each step is logged
    once. A rollback to ``start_step`` or before (``{"event": "rollback", "to_step": ...}``,
    written just before the checkpoint of the step it went back to) keeps the lines before
    it: the steps it abandoned stay in the history.
    """

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, start_step: int):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if start_step > 0 and self.path.exists():  # drop lines a killed run wrote past resume
            recs = [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]
            kept_to = max([i + 1 for i, r in enumerate(recs)
                           if r.get("event") == "rollback" and r["to_step"] <= start_step],
                          default=0)
            keep = [json.dumps(r) for i, r in enumerate(recs)
                    if i < kept_to or r.get("step", 0) <= start_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(ln + "\n" for ln in keep))
            os.replace(tmp, self.path)
        self.fh = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step or None)

    def write(self, record: dict, group: Optional[str],
              groups: Optional[dict[str, str]] = None) -> None:
        """One line of metrics.jsonl; its numbers as TensorBoard scalars ``<group>/<key>``
        (``groups`` names another group for some keys; ``group`` None: no scalars)."""
        if not self.enabled:
            return
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        if self.tb is not None and group is not None:
            for k, v in record.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{(groups or {}).get(k, group)}/{k}", v, record["step"])

    def text(self, tag: str, text: str, step: int) -> None:
        """A TensorBoard text entry (the Text tab)."""
        if self.enabled and self.tb is not None:
            self.tb.add_text(tag, text, step)

    def image(self, tag: str, img: torch.Tensor, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, img, step)

    def close(self, hparams: dict | None = None,
              metrics: Sequence[str] = ()) -> None:
        """Close the log; with ``hparams``, register the run in TensorBoard's HParams tab with
        the columns ``metrics`` (the last value of existing curves: no extra one-point
        charts; run_lincls adds the ``3_eval`` ones)."""
        if not self.enabled:
            return
        self.fh.close()
        if self.tb is not None:
            if hparams is not None:
                for summary in hparams_summary(hparams, {tag: 0.0 for tag in metrics}):
                    self.tb.file_writer.add_summary(summary)
            self.tb.close()


def hparams(c) -> dict:
    """A run's row in TensorBoard's HParams tab (``c``: its Config): strings, not booleans
    (the table shows a boolean as 0.0000 / 1.0000)."""
    bf = c.batchformer.version if c.batchformer.enabled else "off"
    return {"method": c.method.name, "backbone": c.model.backbone, "width": c.model.width,
            "batchformer": bf, "dataset": c.data.name,
            "epochs": c.train.epochs, "batch_size": c.train.batch_size,
            "lr": c.optim.lr, "optimizer": c.optim.name,
            "temperature": float(c.method.temperature)}


def hparam_columns(knn: bool, probe: bool) -> list[str]:
    """The HParams columns a run fills: the online ones only when it measures them (the
    online kNN; the online probe's test accuracy, measured with it)."""
    online = [f"{TB_ONLINE}/knn_top1"] if knn else []
    online += [f"{TB_ONLINE}/probe_test_top1"] if probe and online else []
    return [f"{TB_TRAIN}/loss", *online, f"{TB_EVAL}/knn_top1", f"{TB_EVAL}/linear_top1"]


@dataclasses.dataclass
class Summary:
    run_dir: str
    steps: int
    epochs_done: int
    final_loss: float | None
    knn_top1: float | None
    seconds: float
    skipped_steps: int
    backbone: str | None
    stopped_by: int = 0  # the signal that stopped the run after its checkpoint (0: none)
    health: Optional[str] = None  # the run's health in one line (sslkit.train.health)
    rollbacks: int = 0  # loss-spike rollbacks (train.spike_policy: rollback)
    lr_factor: float = 1.0  # the LR factor they left


def tool(name: str) -> str:
    """How to call a console script installed beside this Python: its bare name when that
    is on PATH, else its path (e.g. ``.venv/bin/tensorboard`` when the venv is not active)."""
    here = Path(sys.executable).parent / name
    if shutil.which(name) == str(here) or not here.exists():
        return name
    rel = os.path.relpath(here)
    return rel if not rel.startswith("..") else str(here)


def print_summary(s: Summary) -> None:
    run = Path(s.run_dir)
    lines = [f"done: {s.steps} steps ({s.epochs_done} epochs) in {s.seconds / 60:.1f} min"
             + (f", final loss {s.final_loss:.4f}" if s.final_loss is not None else "")
             + (f", online kNN top-1 {s.knn_top1:.2f}%" if s.knn_top1 is not None else "")]
    if s.health:
        lines.append(f"  health: {s.health}")
    if s.skipped_steps:
        lines.append(f"  skipped non-finite steps: {s.skipped_steps}")
    if s.rollbacks:
        lines.append(f"  loss-spike rollbacks: {s.rollbacks} (the LR x{s.lr_factor:g} since)")
    lines += [f"  run directory: {run}", f"  config:        {run / 'config.yaml'}",
              f"  metrics:       {run / 'metrics.jsonl'}",
              f"  checkpoint:    {run / 'checkpoints' / 'last.pt'}"]
    if s.backbone:
        lines.append(f"  backbone:      {s.backbone}")
    lines.append(f"  TensorBoard:   {tool('tensorboard')} --logdir {run / 'tb'} --host 127.0.0.1")
    print("\n".join(lines), flush=True)
