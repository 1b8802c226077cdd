"""The online linear probe's cost per training step, side by side in one run (a row goes to
docs/benchmarks.md).

The demo's pretraining step (configs/demo.yaml: MoCo-v2, ResNet-18 w16, 28 px, batch 256,
auto precision: bf16 where native, else fp32) with ``eval.online_probe: false`` and
``true``, the two trainers timed in alternating blocks of steps after a warm-up, on the same
batches (the step reads the next batch of each trainer's own loader).

    python bench/online_probe.py               # CPU, about 2 minutes on 2 cores
    python bench/online_probe.py --device cuda --batch 512
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, timed_alternately, torch_kornia_versions, write_rows  # noqa: E402
from sslkit import config  # noqa: E402
from sslkit.train.engine import Trainer  # noqa: E402

SECTION = "## Online linear probe: cost per step (`bench/online_probe.py`)"
HEADER = ("| date | machine | device | torch / kornia | model | batch | precision | plain s/step "
          "| with online probe s/step | ratio |\n|---|---|---|---|---|---|---|---|---|---|")


def trainer(out: Path, probe: bool, args) -> Trainer:
    cfg = config.load(ROOT / "configs" / "demo.yaml", [
        f"run.output_dir={out}", f"run.device={args.device}", "run.tensorboard=false",
        "run.progress=false", f"train.batch_size={args.batch}", "eval.knn_every=0",
        f"eval.online_probe={str(probe).lower()}"])
    return Trainer(cfg, overwrite=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="steps per timed block")
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        plain, probed = (trainer(Path(tmp) / name, probe, args)
                         for name, probe in (("plain", False), ("probe", True)))
        runs = []
        for t in (plain, probed):
            t.method.train()
            batches = iter(t.input.loader)

            def block(t=t, batches=batches):
                for _ in range(args.steps):
                    images, labels = next(batches)
                    t.train_step(images, labels)
            runs.append(block)
        a, b = timed_alternately(runs, device, args.blocks)
    a, b = a / args.steps, b / args.steps
    row = (f"| {datetime.date.today().isoformat()} | {machine(device)} | {device.type} | "
           f"{torch_kornia_versions()} | resnet18 w16, 1x28px | {args.batch} | "
           f"{plain.precision} | {a:.3f} | {b:.3f} | {b / a:.3f} |")
    print(row)
    if not args.no_write:
        write_rows(SECTION, HEADER, [row])


if __name__ == "__main__":
    main()
