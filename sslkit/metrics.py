"""The metrics log of a run (``metrics.jsonl`` + TensorBoard, rank 0 only) and the summary
printed at the end of pretraining."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line) + TensorBoard scalars; rank 0 only.

    On resume (``start_step > 0``) the lines a killed run wrote past the checkpoint are
    dropped and TensorBoard purges the events after ``start_step``, so each step is logged
    once.
    """

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, start_step: int):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if start_step > 0 and self.path.exists():  # drop lines a killed run wrote past resume
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= start_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(ln + "\n" for ln in keep))
            os.replace(tmp, self.path)
        self.fh = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step or None)

    def write(self, record: dict, prefix: str) -> None:
        if not self.enabled:
            return
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])

    def image(self, tag: str, img: torch.Tensor, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, img, step)

    def close(self, hparams: dict | None = None, final: dict | None = None) -> None:
        if not self.enabled:
            return
        self.fh.close()
        if self.tb is not None:
            if hparams is not None and final:
                self.tb.add_hparams(hparams, {f"hparam/{k}": v for k, v in final.items()},
                                    run_name=".")
            self.tb.close()


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


def print_summary(s: Summary) -> None:
    run = Path(s.run_dir)
    lines = [f"done: {s.steps} steps ({s.epochs_done} epochs) in {s.seconds / 60:.1f} min"
             + (f", final loss {s.final_loss:.4f}" if s.final_loss is not None else "")
             + (f", online kNN top-1 {s.knn_top1:.2f}%" if s.knn_top1 is not None else "")]
    if s.skipped_steps:
        lines.append(f"  skipped non-finite steps: {s.skipped_steps}")
    lines += [f"  run directory: {run}", f"  config:        {run / 'config.yaml'}",
              f"  metrics:       {run / 'metrics.jsonl'}",
              f"  checkpoint:    {run / 'checkpoints' / 'last.pt'}"]
    if s.backbone:
        lines.append(f"  backbone:      {s.backbone}")
    lines.append(f"  TensorBoard:   tensorboard --logdir {run / 'tb'} --host 127.0.0.1")
    print("\n".join(lines), flush=True)
