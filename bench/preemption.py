"""Preemption, measured on the real command line: seconds from a stop signal to the exit and
the steps lost; with ``kill -9``, the steps lost under ``train.checkpoint_every_minutes``; and
how long the ImageNet ResNet-50 MoCo-v2 checkpoint takes to write here (a row goes to
docs/benchmarks.md).

The demo's model and batch (configs/demo.yaml: MoCo-v2, ResNet-18 w16, 28 px, batch 256) on
synthetic images, started as ``run_pretrain.py --auto-resume`` like a requeued job:

1. one process, SIGTERM once step 3 is logged;
2. ``torchrun --nproc_per_node=2``, SIGTERM to torchrun's agent once step 3 is logged;
3. one process with ``train.checkpoint_every_minutes`` (no step cadence, no epoch end on the
   way), ``kill -9`` about 2.7 cadences after the first step.

"Steps lost" is the last step the run logged minus the step of the checkpoint it left.

    python bench/preemption.py           # CPU, about 3 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, write_rows  # noqa: E402
from sslkit import config  # noqa: E402
from sslkit.io.checkpoint import load_checkpoint, save_atomic  # noqa: E402
from sslkit.methods import build_method  # noqa: E402
from sslkit.train.optim import build_optimizer  # noqa: E402
from sslkit.methods.resolve import resolved  # noqa: E402

SECTION = "## Preemption: signal to exit, steps lost (`bench/preemption.py`)"
HEADER = ("| date | machine | torch | model, batch | s/step | SIGTERM, 1 process: s to the "
          "stop line (checkpoint saved), to exit, steps lost | SIGTERM to torchrun, 2 processes: "
          "s to the stop line, to exit, steps lost | kill -9, "
          "checkpoint every M min: steps lost (bound) | ImageNet R50 MoCo-v2 checkpoint: MB, "
          "s to write |\n|---|---|---|---|---|---|---|---|---|")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def sets(out: Path, extra: list[str]) -> list[str]:
    items = [f"run.output_dir={out}", "run.device=cpu", "run.progress=false",
             "run.log_every_steps=1", "run.tensorboard=false", "run.aug_grid_every=0",
             "data.name=synthetic", "data.channels=1", "data.synthetic_train=25600",
             "data.synthetic_classes=10", "train.epochs=1", *extra]
    return [a for it in items for a in ("--set", it)]


def logged(out: Path) -> list[int]:
    """The steps of the training lines of metrics.jsonl."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(ln)["step"] for ln in path.read_text().splitlines()
            if ln.strip().endswith("}") and '"loss"' in ln]


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 600) -> float:
    """Wait until metrics.jsonl holds ``step``; returns the time it was seen."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = logged(out)
        if steps and steps[-1] >= step:
            return time.time()
        if proc.poll() is not None:
            raise SystemExit(f"the run ended before step {step}")
        time.sleep(0.005)
    raise SystemExit(f"no step {step} within {timeout} s")


def end(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def stop_by_signal(tmp: Path, name: str, cmd_prefix: list[str]
                   ) -> tuple[float, float, int, float]:
    """(seconds from SIGTERM to the stop line, i.e. the checkpoint on disk, and to the exit,
    steps lost, s/step) of one launch."""
    out = tmp / name
    proc = launch([*cmd_prefix, str(ROOT / "run_pretrain.py"), "--auto-resume",
                   *sets(out, [])], tmp / f"{name}.log")
    try:
        t3 = wait_step(out, 3, proc)
        t8 = wait_step(out, 8, proc)
        log, t_line = tmp / f"{name}.log", None
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None and time.time() < t0 + 300:
            if t_line is None and "stopped by SIGTERM" in log.read_text():
                t_line = time.time() - t0
            time.sleep(0.005)
        seconds = time.time() - t0
    finally:
        end(proc)
    text = log.read_text()
    if "stopped by SIGTERM" not in text:
        raise SystemExit(f"{name}: no stop line:\n{text[-3000:]}")
    done = logged(out)[-1]
    lost = done - load_checkpoint(out / "checkpoints" / "last.pt")["step"]
    return t_line if t_line is not None else seconds, seconds, lost, (t8 - t3) / 5


def killed(tmp: Path, minutes: float) -> tuple[int, float, float]:
    """(steps lost, the cadence in steps, s/step) of a kill -9 at ~2.7 cadences."""
    out = tmp / "kill9"
    proc = launch([sys.executable, str(ROOT / "run_pretrain.py"), "--auto-resume",
                   *sets(out, [f"train.checkpoint_every_minutes={minutes}"])], tmp / "kill9.log")
    try:
        t1 = wait_step(out, 1, proc)
        while time.time() < t1 + 2.7 * minutes * 60:
            if proc.poll() is not None:
                raise SystemExit("the run ended before the kill; give it more images")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t_kill = time.time()
    finally:
        end(proc)
    done = logged(out)[-1]
    s_per_step = (t_kill - t1) / max(done - 1, 1)
    lost = done - load_checkpoint(out / "checkpoints" / "last.pt")["step"]
    return lost, minutes * 60 / s_per_step, s_per_step


def r50_checkpoint(tmp: Path) -> tuple[float, float]:
    """(MB, seconds) of an atomic write of the ImageNet MoCo-v2 ResNet-50 training state."""
    cfg = resolved(config.load(ROOT / "configs" / "imagenet_mocov2_200ep.yaml"))
    method = build_method(cfg)
    opt = build_optimizer(method, cfg.optim, cfg.train.batch_size)
    for p in method.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()  # SGD's momentum buffers exist, as in a real checkpoint
    state = {"model": method.state_dict(), "optimizer": opt.state_dict(), "step": 1}
    path = tmp / "r50" / "last.pt"
    path.parent.mkdir()
    save_atomic(state, path)  # warm-up (allocations, page cache)
    t0 = time.perf_counter()
    save_atomic(state, path)
    return path.stat().st_size / 2 ** 20, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=0.25,
                   help="train.checkpoint_every_minutes of the kill -9 run")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        one = stop_by_signal(tmp, "one", [sys.executable])
        print(f"1 process: SIGTERM -> checkpoint saved {one[0]:.2f} s, exit {one[1]:.2f} s, "
              f"steps lost {one[2]}, {one[3]:.2f} s/step", flush=True)
        two = stop_by_signal(tmp, "two", [torchrun, "--standalone", "--nproc_per_node=2"])
        print(f"torchrun, 2 processes: SIGTERM -> checkpoint saved {two[0]:.2f} s, exit "
              f"{two[1]:.2f} s, steps lost {two[2]}, {two[3]:.2f} s/step", flush=True)
        lost, bound, s_step = killed(tmp, args.minutes)
        print(f"kill -9 with a checkpoint every {args.minutes} min: {lost} steps lost "
              f"(the cadence is {bound:.0f} steps)", flush=True)
        mb, secs = r50_checkpoint(tmp)
        print(f"ImageNet R50 MoCo-v2 checkpoint: {mb:.0f} MB written in {secs:.2f} s", flush=True)
    if not args.no_write:
        row = (f"| {datetime.date.today()} | {machine()} | {torch.__version__.split('+')[0]} | "
               f"resnet18 w16, 1x28px, 256 | {one[3]:.2f} (1 process), {two[3]:.2f} (2) | "
               f"{one[0]:.2f}, {one[1]:.2f}, {one[2]} | {two[0]:.2f}, {two[1]:.2f}, {two[2]} | "
               f"M={args.minutes:g}: {lost} ({bound:.0f}) | {mb:.0f}, {secs:.2f} |")
        write_rows(SECTION, HEADER, [row])
        print(f"row written to {ROOT / 'docs' / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
