"""Where and how a run computes: device, precision, CPU threads, seeding, RNG state.

The entry points (pretraining, evaluation) decide the device and precision here, once; the
modules below them follow their inputs' device.
"""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch
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


def resolve_precision(run: RunConfig, device: torch.device) -> str:
    """``auto`` is bf16 on a GPU that supports it, else fp32; fp16 needs CUDA."""
    p = run.precision
    if p == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if p == "fp16" and device.type != "cuda":
        raise ConfigError("run.precision=fp16 needs a CUDA device (it uses a GradScaler); on "
                          "the CPU use bf16 or fp32")
    return p


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
