"""Memory and time of the switches for fewer GPUs than the recipe (rows go to
docs/benchmarks.md): one config at batch B, its step as the engine runs it
(:meth:`sslkit.train.engine.Trainer.train_step`) with ``train.micro_batch`` B, B/2, B/4 and
B/8, with ``model.grad_checkpointing``, and with ``run.compile``; each variant in a fresh
child process, so that its peak memory is its own.

Memory: on a GPU ``torch.cuda.max_memory_allocated`` over the timed steps minus the memory
allocated before them; on the CPU the child's peak resident set over the timed steps (Linux's
``VmHWM``, reset before them through ``/proc/self/clear_refs``) minus its resident set once
the ``--warmup`` steps ran (the optimizer's state exists then), i.e. what a step adds on top
of the model: the activations. On the CPU the memory comes from a second child run with
glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``), so that a freed
activation leaves the resident set instead of staying in the heap for the next step (which
would hide it from the difference); its page faults slow the step, so the time comes from
the first child, under the default allocator. Time: the median
step over ``--steps`` steps after the warm-up. Ratios are to the plain step (micro-batch B).

``--compile-demo`` instead times the demo (configs/demo.yaml) eagerly and compiled, the
compilation counted: the first compiled step's extra time, the steady img/s of both, and
the wall time of the demo's 2,106 steps each way.

    python bench/memory.py                                   # CPU: demo ViT, batch 256
    python bench/memory.py --config configs/demo.yaml        # the demo's ResNet
    python bench/memory.py --device cuda --config configs/imagenet_mocov3_vits_300ep.yaml \\
        --batch 1024 --variants whole,eighth,compile --set data.name=synthetic \
        data.synthetic_train=2048
    python bench/memory.py --compile-demo                    # compile on the demo
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import (EngineSteps, bench_precision, bench_trainer, machine,  # noqa: E402
                    torch_kornia_versions, write_rows)

SECTION = "## Memory and time: micro-batches, grad checkpointing, compile (`bench/memory.py`)"
HEADER = ("| date | machine | device | torch / kornia | config | batch | precision | variant "
          "| peak activation MB | memory ratio | s/step | time ratio | img/s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
COMPILE_SECTION = "## torch.compile on the demo, compilation counted (`bench/memory.py --compile-demo`)"
COMPILE_HEADER = ("| date | machine | torch | eager img/s | compiled img/s | steady speed-up "
                  "| first compiled step s | demo steps | eager demo min | compiled demo min "
                  "(compilation included) |\n|---|---|---|---|---|---|---|---|---|---|")


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (``VmRSS``) or its peak since the last reset (``VmHWM``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    """Start ``VmHWM`` again from the current resident set (Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def child(args) -> dict:
    """One variant, in this process: build, warm up, time; print one JSON line."""
    dev = torch.device(args.device)
    precision = bench_precision(args.precision, dev)
    trainer = bench_trainer([*args.overrides, f"train.batch_size={args.batch}",
                             *args.variant_sets], dev, precision, args.config)
    steps = EngineSteps(trainer)
    t0 = time.perf_counter()
    steps.run(1)
    first = time.perf_counter() - t0
    steps.run(max(0, args.warmup - 1))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev) / 2**20
    else:
        reset_peak_rss()
        base = rss_mb()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        steps.run(1)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20 - base
    else:
        peak = rss_mb("VmHWM") - base
    out = {"peak_mb": max(peak, 0.0), "s_per_step": statistics.median(times),
           "first_step_s": first, "precision": precision, "batch": args.batch,
           "lines": trainer.model_lines}
    print("RESULT " + json.dumps(out), flush=True)
    return out


def run_child(args, sets: list[str], steps: int | None = None, mmap_all: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", "--device", args.device, "--config", args.config,
           "--batch", str(args.batch), "--precision", args.precision, "--warmup",
           str(args.warmup), "--steps", str(steps or args.steps), "--set", *args.overrides,
           "--variant", *sets]
    env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": "131072"} if mmap_all else {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"variant {sets} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def measure(args, sets: list[str]) -> dict:
    """A variant's step time (default allocator) and, on the CPU, its activation memory from a
    second child whose freed tensors leave the resident set (see the module's docstring)."""
    timed = run_child(args, sets)
    if args.device != "cpu":
        return timed
    return {**timed, "peak_mb": run_child(args, sets, steps=2, mmap_all=True)["peak_mb"]}


def compile_demo(args) -> None:
    cfg = str(ROOT / "configs" / "demo.yaml")
    args.config, args.batch = cfg, 256
    eager = run_child(args, ["run.compile=false"], steps=args.steps)
    compiled = run_child(args, ["run.compile=true"], steps=args.steps)
    total = 2106  # the demo: 9 epochs of 234 steps
    eager_min = total * eager["s_per_step"] / 60
    extra = compiled["first_step_s"] - eager["first_step_s"]
    compiled_min = (extra + total * compiled["s_per_step"]) / 60
    ips = (256 / eager["s_per_step"], 256 / compiled["s_per_step"])
    print(f"eager {ips[0]:.0f} img/s, compiled {ips[1]:.0f} img/s ({ips[1] / ips[0]:.2f}x), "
          f"compilation {extra:.0f} s; the demo's {total} steps: {eager_min:.1f} min eager, "
          f"{compiled_min:.1f} min compiled", flush=True)
    if not args.no_write:
        write_rows(COMPILE_SECTION, COMPILE_HEADER, [
            f"| {datetime.date.today().isoformat()} | {machine(torch.device(args.device))} | "
            f"{torch.__version__.split('+')[0]} | {ips[0]:.0f} | {ips[1]:.0f} | "
            f"{ips[1] / ips[0]:.2f}x | {compiled['first_step_s']:.0f} | {total} | "
            f"{eager_min:.1f} | {compiled_min:.1f} |"])
        print("added a row to docs/benchmarks.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo_vit.yaml"))
    ap.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                    help="auto: bf16 where the device computes it natively, else fp32")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--variants", default="whole,half,quarter,eighth,ckpt,compile",
                    help="which of: whole, half, quarter, eighth (micro-batches of B/1..B/8), "
                         "ckpt (grad checkpointing), compile")
    ap.add_argument("--compile-demo", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", nargs="*", default=[], dest="variant_sets", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.compile_demo:
        compile_demo(args)
        return
    b = args.batch
    known = {"whole": ("whole batch", [f"train.micro_batch={b}"]),
             "half": (f"micro_batch {b // 2}", [f"train.micro_batch={b // 2}"]),
             "quarter": (f"micro_batch {b // 4}", [f"train.micro_batch={b // 4}"]),
             "eighth": (f"micro_batch {b // 8}", [f"train.micro_batch={b // 8}"]),
             "ckpt": ("grad checkpointing", ["model.grad_checkpointing=true"]),
             "compile": ("compile", ["run.compile=true"])}
    chosen = ["whole", *[v for v in args.variants.split(",") if v != "whole"]]
    unknown = [v for v in chosen if v not in known]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(known)}")
    variants = [known[v] for v in chosen]
    where = machine(torch.device(args.device))
    results = [(name, measure(args, sets)) for name, sets in variants]
    base = results[0][1]
    rows = []
    for name, r in results:
        mem = r["peak_mb"] / base["peak_mb"] if base["peak_mb"] else float("nan")
        t = r["s_per_step"] / base["s_per_step"]
        print(f"{name:20s} {r['peak_mb']:8.0f} MB ({mem:.2f}x)  {r['s_per_step']:.3f} s/step "
              f"({t:.2f}x)", flush=True)
        rows.append(f"| {datetime.date.today().isoformat()} | {where} | {args.device} | "
                    f"{torch_kornia_versions()} | {Path(args.config).name} "
                    f"{' '.join(args.overrides)} | {b} | {r['precision']} | {name} | "
                    f"{r['peak_mb']:.0f} | {mem:.2f} | {r['s_per_step']:.3f} | {t:.2f} | "
                    f"{b / r['s_per_step']:.0f} |")
    if not args.no_write:
        write_rows(SECTION, HEADER, rows)
        print("added rows to docs/benchmarks.md")


if __name__ == "__main__":
    main()
