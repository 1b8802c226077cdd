"""Shared pieces of the benchmark scripts: machine description, timing, docs/benchmarks.md."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def cpu_model() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def cpu_bf16_kind() -> str:
    """The CPU's bf16 capability, on which every CPU ratio depends: "native bf16" or
    "bf16 emulated" (oneDNN's check and the start-up probe of :func:`sslkit.train.runtime.cpu_bf16`),
    and "AVX2 stand-in" when ``ONEDNN_MAX_CPU_ISA`` caps the instruction set."""
    from sslkit.train.runtime import cpu_bf16

    kind = "native bf16" if cpu_bf16().native else "bf16 emulated"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{kind}, {cap} stand-in" if cap else kind


def machine(device: torch.device | None = None) -> str:
    """The GPU's name, or the CPU model, core count, bf16 capability and load (other jobs on
    the machine)."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    load = f", load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{cpu_model()}, {os.cpu_count()} cores, {cpu_bf16_kind()}{load}"


def bench_precision(precision: str, device: torch.device) -> str:
    """A benchmark's ``--precision`` as a run would resolve it (``auto``: bf16 on a GPU that
    supports it and on a CPU that computes bf16 natively, else fp32); its note, if any, is
    printed."""
    from sslkit.config import RunConfig
    from sslkit.train.runtime import choose_precision

    choice = choose_precision(RunConfig(precision=precision), device)
    print(f"precision: {choice.precision} ({choice.reason})", flush=True)
    if choice.note:
        print(choice.note, flush=True)
    return choice.precision


def torch_kornia_versions() -> str:
    """``"<torch> / <kornia>"`` without local build tags, for the versions column."""
    import kornia

    return f"{torch.__version__.split('+')[0]} / {kornia.__version__}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_pair(fn_a: Callable, fn_b: Callable, device: torch.device,
               repeats: int) -> tuple[float, float]:
    """Median seconds of ``fn_a`` and ``fn_b``, timed alternately (a, b, a, b, ...) after one
    warm-up each, so that both see the same background load on a shared machine."""
    return tuple(timed_alternately([fn_a, fn_b], device, repeats))  # type: ignore[return-value]


def timed_alternately(fns: Sequence[Callable], device: torch.device,
                      repeats: int) -> list[float]:
    """Median seconds of each function, timed round-robin after one warm-up each."""
    for fn in fns:
        fn()
    sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def median_time(fn: Callable, repeats: int):
    """(median seconds, last result) of ``repeats`` calls of ``fn``."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def write_rows(section: str, header: str, rows: list[str], path: Path = DOC) -> None:
    """Append ``rows`` to the table under ``section`` in docs/benchmarks.md (the section and
    its table header are created when missing)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if section not in text:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{header}\n"
    lines = text.split("\n")
    start = lines.index(section)
    end = start + 1
    while end < len(lines) and not lines[end].startswith("## "):
        end += 1
    last_row = max(i for i in range(start, end) if lines[i].startswith("|"))
    lines[last_row + 1:last_row + 1] = rows
    path.write_text("\n".join(lines))


def export_vs_torchvision(exported: torch.nn.Module, tv: torch.nn.Module, x: torch.Tensor,
                          device: torch.device, autocast_ctx: Callable, steps: int, blocks: int,
                          timer: Callable = None) -> tuple[float, bool]:
    """(inference time of the exported backbone / torchvision's model on ``x``, whether the
    outputs are identical), timed alternately; exits when the outputs differ."""
    def infer(net):
        def run():
            with torch.no_grad(), autocast_ctx():
                for _ in range(steps):
                    net(x)
        return run

    with torch.no_grad():
        same = torch.equal(exported(x), tv(x))
    t_exp, t_tv = (timer or timed_alternately)([infer(exported), infer(tv)], device, blocks)
    print(f"exported backbone / torchvision inference time {t_exp / t_tv:.3f} "
          f"(outputs identical: {same})", flush=True)
    if not same:
        raise SystemExit("exported backbone and torchvision model disagree")
    return t_exp / t_tv, same


# --------------------------------------------------------------------------- the engine's step
def bench_trainer(items: Sequence[str], device: torch.device, precision: str,
                  config_path: str | None = None):
    """A :class:`sslkit.train.engine.Trainer` for a benchmark: ``config_path`` (or the defaults)
    plus ``items``, a throwaway run directory, no logging, no online kNN. Benchmarks of
    sslkit's pretraining time its :meth:`~sslkit.train.engine.Trainer.train_step`, the step that
    ``run_pretrain.py`` runs (GradScaler, gradient clipping, non-finite guard, LR schedule,
    EMA included)."""
    import tempfile

    from sslkit import config
    from sslkit.train.engine import Trainer

    out = tempfile.mkdtemp(prefix="sslkit-bench-")
    extra = [f"run.output_dir={out}", f"run.device={device.type}",
             f"run.precision={precision}", "run.progress=false", "run.tensorboard=false",
             "eval.knn_every=0", "run.aug_grid_every=0"]
    data = config.read_yaml_file(config_path) if config_path else {}
    return Trainer(config.build(data, [*items, *extra], source=config_path or "bench"))


class EngineSteps:
    """``run(n)``: ``n`` of the trainer's own steps (:meth:`Trainer.train_step`), on the
    batches of its loader (cycled over epochs) or, with ``batch``, on one fixed batch of
    (uint8 images, labels) already where the caller wants them."""

    def __init__(self, trainer, batch: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.trainer, self.batch, self._it = trainer, batch, None
        trainer.method.train()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch is not None:
            return self.batch
        while True:
            if self._it is None:
                self._it = self.trainer.batches()
            item = next(self._it, None)
            if item is not None:
                return item
            self._it = None

    def run(self, n: int) -> None:
        for _ in range(n):
            self.trainer.train_step(*self.next_batch())
