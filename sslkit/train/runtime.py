"""Where and how a run computes: device, precision, CPU threads, seeding, RNG state.

The entry points (pretraining, evaluation) decide the device and precision here, once; the
modules below them follow their inputs' device.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslkit import distributed as dist_utils
from sslkit.config import RunConfig
from sslkit.errors import ConfigError


def resolve_device(run: RunConfig) -> torch.device:
    """``run.device``: auto picks CUDA when present; ``cuda`` without a GPU is a user error."""
    if run.device == "cuda" or (run.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("run.device=cuda but no CUDA GPU is available here; use "
                              "--set run.device=cpu (or auto)")
        return torch.device("cuda", dist_utils.get_local_rank())
    return torch.device("cpu")


# The CPU bf16 probe: bf16 is picked by ``run.precision: auto`` when it runs the probe in at
# most this fraction of fp32's time. Measured: 0.46-0.66 on a CPU with native bf16
# (AVX512-BF16), 12-15 where oneDNN emulates it (AVX2 only): the threshold sits between.
BF16_FASTER_THAN = 1.0


@dataclasses.dataclass(frozen=True)
class CpuBf16:
    """What this CPU does with bf16: oneDNN's own support check (``library``), and the
    probe's measured time of bf16 over fp32 (``slowdown``; None when it did not run) and its
    cost (``probe_ms``)."""

    library: bool
    slowdown: Optional[float]
    probe_ms: float = 0.0

    @property
    def native(self) -> bool:
        """bf16 is worth it here: oneDNN supports it and the probe ran it faster than fp32."""
        return self.library and self.slowdown is not None and self.slowdown < BF16_FASTER_THAN


def _onednn_bf16() -> bool:
    """oneDNN's own check (AVX512-BF16, AMX or AVX512 on x86, bf16 on ARM; it honours
    ``ONEDNN_MAX_CPU_ISA``); True when this torch has no such check (the probe decides)."""
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else True
    except RuntimeError:
        return True


def _probe_slowdown(reps: int = 3) -> float:
    """bf16-autocast time / fp32 time of one 3x3 convolution's forward and backward
    (16 x 32 x 16 x 16, one thread, no RNG drawn): the fastest of ``reps`` runs each after
    one warm-up; stops after one bf16 run already 2x slower than fp32. About 25 ms where bf16
    is native, 80-110 ms where it is emulated (2-core AMD EPYC)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier than several threads on a shared machine
    try:
        with torch.enable_grad():
            x = torch.linspace(-1, 1, 16 * 32 * 16 * 16).reshape(16, 32, 16, 16)
            w = torch.linspace(-0.1, 0.1, 32 * 32 * 9).reshape(32, 32, 3, 3)
            x.requires_grad_(True)
            w.requires_grad_(True)

            def run(bf16: bool) -> float:
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    y = F.conv2d(x, w, padding=1)
                torch.autograd.grad(y.float().sum(), (x, w))
                return time.perf_counter() - t0

            run(False)
            fp32 = min(run(False) for _ in range(reps))
            run(True)
            bf16 = run(True)
            for _ in range(reps - 1):
                if bf16 > 2 * fp32:
                    break
                bf16 = min(bf16, run(True))
    finally:
        torch.set_num_threads(threads)
    return bf16 / fp32


_CPU_BF16: dict[bool, CpuBf16] = {}


def cpu_bf16(measure: bool = False) -> CpuBf16:
    """This CPU's bf16 (cached per process). The probe runs when oneDNN reports bf16 support
    (a reported support can still be slow: ``ONEDNN_MAX_CPU_ISA``, AVX512 without bf16
    instructions), or when ``measure`` asks for the slowdown anyway."""
    key = measure or _onednn_bf16()
    if key not in _CPU_BF16:
        library = _onednn_bf16()
        slowdown, ms = None, 0.0
        if library or measure:
            t0 = time.perf_counter()
            slowdown = _probe_slowdown()
            ms = (time.perf_counter() - t0) * 1e3
        _CPU_BF16[key] = CpuBf16(library, slowdown, ms)
    return _CPU_BF16[key]


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run computes in, why (``reason``, for the run header) and a ``note``
    line for a choice that costs time (explicit bf16 on a CPU that emulates it)."""

    precision: str
    reason: str
    note: Optional[str] = None


def choose_precision(run: RunConfig, device: torch.device) -> PrecisionChoice:
    """``run.precision`` on ``device``. ``auto``: on a GPU, bf16 when it supports bf16, else
    fp32; on a CPU, bf16 only where it computes bf16 natively (:func:`cpu_bf16`: oneDNN's
    check and a measured probe), else fp32: emulated bf16 made a demo step 12x slower than
    fp32 on an AVX2-only CPU. An explicit ``bf16`` on such a CPU runs as asked, with a note
    giving the measured slowdown; ``fp16`` needs CUDA."""
    p = run.precision
    if p == "fp16" and device.type != "cuda":
        raise ConfigError("run.precision=fp16 needs a CUDA device (it uses a GradScaler); on "
                          "the CPU use auto, bf16 or fp32")
    if device.type == "cuda":
        if p != "auto":
            return PrecisionChoice(p, "as set")
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "auto: this GPU supports bf16")
        return PrecisionChoice("fp32", "auto: this GPU has no bf16")
    if p == "fp32":
        return PrecisionChoice(p, "as set")
    cpu = cpu_bf16(measure=p == "bf16")
    probe = (f"a {cpu.probe_ms:.0f} ms probe ran bf16 in {cpu.slowdown:.2f}x fp32's time"
             if cpu.slowdown is not None else "")
    if p == "bf16":
        note = None
        if not cpu.native:
            note = (f"note: run.precision=bf16 on a CPU without native bf16: emulated, it "
                    f"ran {cpu.slowdown:.1f}x slower than fp32 in a {cpu.probe_ms:.0f} ms "
                    f"probe; run.precision=auto picks fp32 here")
        return PrecisionChoice("bf16", "as set", note)
    if cpu.native:
        return PrecisionChoice("bf16", f"auto: this CPU computes bf16 natively; {probe}")
    if not cpu.library:
        return PrecisionChoice("fp32", "auto: oneDNN reports no native bf16 on this CPU, "
                                       "where emulated bf16 is many times slower")
    return PrecisionChoice("fp32", f"auto: bf16 is not faster than fp32 on this CPU; {probe}")


def resolve_precision(run: RunConfig, device: torch.device) -> str:
    """The precision of :func:`choose_precision`, without its reason."""
    return choose_precision(run, device).precision


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_cpu(run: RunConfig) -> None:
    if run.num_threads:
        torch.set_num_threads(run.num_threads)
    torch.set_flush_denormal(True)  # denormals made CPU feature extraction ~3x slower


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def share_cores_with_workers(run: RunConfig, device: torch.device, workers: int) -> None:
    """On a CPU training device fed by ``workers`` loader processes, leave them their cores:
    the main process keeps ``max(1, cores - workers)`` torch threads (``run.num_threads``
    wins when set). Oversubscribed, torch's OpenMP threads wait on each other at every op:
    measured on 2 cores with 2 workers, the device-side augmentation of a batch ran 25x
    slower with 2 threads than with 1."""
    if device.type == "cpu" and workers > 0 and not run.num_threads:
        torch.set_num_threads(max(1, usable_cores() - workers))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fork_rng(device: torch.device):
    """A block whose random draws leave the run's RNG streams (CPU, and CUDA if used) as
    they were: monitoring must not change what training draws next."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as plain data for a checkpoint."""
    py = random.getstate()
    npst = np.random.get_state()
    state = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [npst[0], torch.from_numpy(npst[1].astype(np.int64)), int(npst[2]),
                       int(npst[3]), float(npst[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if t.is_floating_point())


def compile_with_fallback(module: nn.Module, label: str) -> None:
    """``torch.compile`` ``module`` in place (``nn.Module.compile``: its state-dict keys stay
    plain, no ``_orig_mod.``), falling back to eager with one ``note:`` line when compilation
    fails at the first call (no C++ compiler, an unsupported op, an old torch)."""
    eager = module._call_impl

    def fall_back(e: Exception) -> None:
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        if dist_utils.is_main_process():
            print(f"note: torch.compile of the {label} failed ({type(e).__name__}"
                  f"{': ' + reason if reason else ''}); it runs eagerly", flush=True)

    try:
        compiled = torch.compile(eager)
    except Exception as e:  # noqa: BLE001 - no compiler at all: eager
        fall_back(e)
        return
    state = {"compiled": None}

    def call(*args, **kwargs):
        if state["compiled"] is False:
            return eager(*args, **kwargs)
        try:
            out = compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compiler failure: run eagerly instead
            if state["compiled"]:
                raise  # it compiled before: a real error of the computation
            state["compiled"] = False
            fall_back(e)
            return eager(*args, **kwargs)
        state["compiled"] = True
        return out

    module._compiled_call_impl = call
