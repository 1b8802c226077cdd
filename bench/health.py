"""The cost of the health signals and of the loss-spike guard, side by side in one run (rows
go to docs/benchmarks.md).

For each config (default: the three demos, MoCo-v2, MoCo-v3, ViT) the engine's own step
(``Trainer.train_step``, which keeps the step's tensors for the signals) is timed in blocks,
alternately with what a log step adds (``Health.signals`` on the full buffer, the four values
read back, as ``Trainer._log_step`` does) and with the snapshot the spike guard takes every
``train.spike_window`` steps under ``train.spike_policy: rollback``. The shares of a run's
time: signals / (``run.log_every_steps`` x step) and snapshot / (``spike_window`` x step).
``--sizes`` adds the guard's memory for the ImageNet recipes (two snapshots of the method's
state and of the optimizer's, built on the CPU, not trained).

    python bench/health.py                   # CPU, the three demos (about 5 minutes, 2 cores)
    python bench/health.py --sizes --no-write
    python bench/health.py --configs configs/demo.yaml --steps 1 --blocks 2 --batch 32 --no-write
    python bench/health.py --device cuda --configs configs/imagenet_mocov2_200ep.yaml \
        --set data.name=synthetic data.synthetic_train=4096 data.image_size=224
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import (EngineSteps, bench_precision, bench_trainer, machine,  # noqa: E402
                    timed_alternately, torch_kornia_versions, write_rows)
from sslkit import config  # noqa: E402
from sslkit.methods import build_method  # noqa: E402
from sslkit.methods.resolve import resolved  # noqa: E402

DEMOS = ["configs/demo.yaml", "configs/demo_mocov3.yaml", "configs/demo_vit.yaml"]
RECIPES = ["configs/imagenet_mocov2_200ep.yaml", "configs/imagenet_mocov3_r50_100ep.yaml",
           "configs/imagenet_mocov3_vits_300ep.yaml"]
SECTION = "## Health signals and the spike guard: cost (`bench/health.py`)"
HEADER = ("| date | machine | device | torch / kornia | config | batch | precision | s/step | "
          "signals s (rows) | signals / (log_every x step) | snapshot s | snapshot / "
          "(window x step) |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
SLOTS = {"sgd": 1, "lars": 1, "adamw": 2}  # optimizer state tensors per trained parameter


def cost_row(path: str, args, device: torch.device, precision: str) -> str:
    items = [f"train.batch_size={args.batch}"] if args.batch else []
    trainer = bench_trainer([*items, *args.overrides, "train.spike_policy=rollback"], device,
                            precision, str(ROOT / path))
    steps = EngineSteps(trainer)
    steps.run(trainer.health.batches)  # the buffer full, as at any log step of a run

    def signals():
        return {k: float(v) for k, v in trainer.health.signals().items()}

    def snapshot():
        return trainer.spikes.snapshot(trainer.step)

    t_steps, t_sig, t_snap = timed_alternately([lambda: steps.run(args.steps), signals,
                                                snapshot], device, args.blocks)
    step = t_steps / args.steps
    cfg = trainer.cfg
    rows = len(trainer.health.kept) * trainer.local_batch
    return (f"| {datetime.date.today().isoformat()} | {machine(device)} | {device.type} | "
            f"{torch_kornia_versions()} | {Path(path).name} | {cfg.train.batch_size} | "
            f"{precision} | {step:.3f} | {t_sig:.4f} ({rows}) | "
            f"{t_sig / (cfg.run.log_every_steps * step):.2%} | {t_snap:.4f} | "
            f"{t_snap / (cfg.train.spike_window * step):.2%} |")


def snapshot_sizes() -> None:
    """Two snapshots of the method's state dict and of the optimizer's state, per recipe."""
    print("| recipe | method state GB | optimizer state GB | two snapshots GB |")
    for path in RECIPES:
        cfg = resolved(config.load(ROOT / path, ["run.device=cpu"]))
        method = build_method(cfg)
        model = sum(t.numel() * t.element_size() for t in method.state_dict().values())
        trained = sum(p.numel() * p.element_size() for p in method.parameters()
                      if p.requires_grad)
        opt = SLOTS[cfg.optim.name] * trained
        print(f"| {Path(path).name} | {model / 1e9:.3f} | {opt / 1e9:.3f} | "
              f"{2 * (model + opt) / 1e9:.2f} |", flush=True)
        del method


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=DEMOS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch", type=int, default=None, help="default: the config's")
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--set", nargs="+", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="more config overrides (e.g. synthetic data for an ImageNet recipe)")
    p.add_argument("--sizes", action="store_true", help="only the guard's memory per recipe")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.sizes:
        snapshot_sizes()
        return
    device = torch.device(args.device)
    precision = bench_precision(args.precision, device)
    rows = []
    for path in args.configs:
        rows.append(cost_row(path, args, device, precision))
        print(rows[-1], flush=True)
    if not args.no_write:
        write_rows(SECTION, HEADER, rows)


if __name__ == "__main__":
    main()
