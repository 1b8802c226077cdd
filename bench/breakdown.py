"""Where a pretraining step's time goes: the demo's step, phase by phase (rows go to
docs/benchmarks.md).

The engine's own steps (``Trainer.train_step`` over ``Trainer.batches()``, what
``run_pretrain.py`` runs) of ``--config`` (default ``configs/demo.yaml``) run under
``torch.profiler``; the step marks each phase with a ``record_function`` range
(``sslkit.train.step.PHASES``): data (waiting for the loader's batch), augment (the two views),
forward (both encoders and the loss; MoCo-v2's queue update inside it is reported apart as
queue), backward, optimizer (GradScaler step and update), ema (the momentum update). What no
range covers (the loss's all-reduce and ``float()``, ``zero_grad``, the LR schedule's step)
is "other". Shares are of the profiled steps' wall time; the profiler's own overhead is the
ratio of the profiled to an unprofiled block of the same steps.

    python bench/breakdown.py                 # CPU, the demo (~1 min on 2 cores)
    python bench/breakdown.py --set batchformer.enabled=true
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's own chatter, before torch loads
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import (EngineSteps, bench_precision, bench_trainer, machine, sync,  # noqa: E402
                    torch_kornia_versions, write_rows)
from sslkit.train.step import PHASES  # noqa: E402

SECTION = "## The demo's step, phase by phase (`bench/breakdown.py`)"
NAMES = ["data", "augment", "forward", "queue", "backward", "optimizer", "ema", "other"]
HEADER = ("| date | machine | device | torch / kornia | config | batch | precision | s/step "
          "| " + " | ".join(NAMES) + " | profiler overhead |\n"
          "|" + "---|" * (9 + len(NAMES)))


def phase_seconds(prof) -> dict[str, float]:
    """Seconds inside each ``sslkit.*`` range (queue taken out of forward)."""
    total = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key in PHASES}
    out = {name.split(".", 1)[1]: total.get(name, 0.0) for name in PHASES}
    out["forward"] -= out["queue"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--set", nargs="+", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                    help="auto: bf16 where the device computes it natively, else fp32")
    ap.add_argument("--steps", type=int, default=20, help="profiled steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    dev = torch.device(args.device)
    precision = bench_precision(args.precision, dev)
    torch.set_flush_denormal(True)
    where = machine(dev)
    trainer = bench_trainer(args.overrides, dev, precision, args.config)
    runner = EngineSteps(trainer)
    runner.run(args.warmup)
    sync(dev)
    t0 = time.perf_counter()
    runner.run(args.steps)
    sync(dev)
    plain = time.perf_counter() - t0
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        runner.run(args.steps)
        sync(dev)
        wall = time.perf_counter() - t0
    parts = phase_seconds(prof)
    parts["other"] = max(wall - sum(parts.values()), 0.0)
    shares = {k: v / wall for k, v in parts.items()}
    print(f"{wall / args.steps:.3f} s/step profiled ({plain / args.steps:.3f} unprofiled): "
          + ", ".join(f"{k} {shares[k]:.1%}" for k in NAMES), flush=True)
    if not args.no_write:
        name = Path(args.config).name + (" + " + " ".join(args.overrides)
                                         if args.overrides else "")
        row = (f"| {datetime.date.today().isoformat()} | {where} | {dev.type} | "
               f"{torch_kornia_versions()} | {name} | {trainer.cfg.train.batch_size} | "
               f"{precision} | {plain / args.steps:.3f} | "
               + " | ".join(f"{shares[k]:.1%}" for k in NAMES) + f" | {wall / plain:.2f}x |")
        write_rows(SECTION, HEADER, [row])
        print("added a row to docs/benchmarks.md")


if __name__ == "__main__":
    main()
