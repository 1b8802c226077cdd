"""Process-group helpers for torchrun + DistributedDataParallel, and the signals that stop
a run's processes.

A plain single process (no launcher) is the world of size 1: every helper then works without
initialising anything. Under ``torchrun`` the environment gives RANK / WORLD_SIZE /
LOCAL_RANK and :func:`init_distributed` joins the group (NCCL on CUDA, gloo on CPU).
SIGTERM and SIGUSR1 stop a run after a checkpoint (:mod:`sslkit.train.lifecycle`); loader
workers ignore them (:func:`ignore_stop_signals`).
"""
from __future__ import annotations

import datetime
import os
import signal
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather as all_gather_autograd

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_stop_signals() -> None:
    """In a DataLoader worker: outlive SIGTERM/SIGUSR1 sent to the whole process group (the
    main process stops the workers itself when the run ends)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device_type: str, timeout_s: int | None = None) -> bool:
    """Join the process group torchrun describes; returns whether running distributed.

    NCCL when training on CUDA (each process takes GPU ``LOCAL_RANK``), gloo on the CPU.
    ``timeout_s`` (``run.dist_timeout_s``; None: PyTorch's default) bounds every collective:
    gloo raises in the waiting process; NCCL's watchdog aborts it, with
    ``TORCH_NCCL_ASYNC_ERROR_HANDLING=1`` set here unless the environment chose a mode.
    """
    if is_distributed():
        return True
    if not launched_by_torchrun():
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(get_local_rank())
    kwargs: dict[str, Any] = ({} if timeout_s is None
                              else {"timeout": datetime.timedelta(seconds=timeout_s)})
    store = _attempt_store(kwargs.get("timeout", datetime.timedelta(minutes=30)))
    if store is not None:
        kwargs.update(store=store, rank=int(os.environ["RANK"]),
                      world_size=int(os.environ["WORLD_SIZE"]))
    dist.init_process_group(backend=backend, **kwargs)
    return True


def _attempt_store(timeout: datetime.timedelta) -> "dist.Store | None":
    """The store of this torchrun attempt, on one node; None: the default (``env://``).

    On one node torchrun's agent serves a single TCP store for all its restarts of the
    workers (``TORCHELASTIC_USE_AGENT_STORE=True``). Keys written by an earlier attempt stay
    there, so a restarted rank can read a dead peer's address and fail to connect, or wait on
    a barrier counted by the dead. Here each attempt gets its own key prefix (the restart
    count, the same for every worker of one agent). Across nodes the agents count restarts
    independently; launch torchrun with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` there (each
    rendezvous round then gets a new store; scripts/slurm_pretrain.sh sets it).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        if os.environ.get("RANK") == "0" and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS",
                                                                "0")) > 0:
            print("note: torchrun restarts across nodes share one store, so a restarted "
                  "process can be given a dead one's address; launch torchrun with "
                  "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", flush=True)
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=False, timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"sslkit/attempt_{attempt}", store)


def destroy_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a download), then the others."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:  # also when rank 0 fails: the others go on (and meet the error themselves)
        if is_main_process():
            barrier()


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N, ...) from every rank along dim 0, rank order; no gradient.

    Every rank must pass a tensor of the same shape.
    """
    if get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather`, but gradients flow back to each rank's own slice."""
    if get_world_size() == 1:
        return x
    return torch.cat(all_gather_autograd(x.contiguous()), dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a copy; ``x`` is unchanged)."""
    if get_world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / get_world_size()


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` (picklable) of every rank, in rank order."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``x`` over ranks (in place; returns ``x``)."""
    if get_world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` (picklable) from rank ``src`` on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast of ``x`` from ``src`` to every rank."""
    if get_world_size() > 1:
        dist.broadcast(x, src)
    return x


@torch.no_grad()
def all_gather_sizes(x: torch.Tensor) -> list[torch.Tensor]:
    """``x`` (N_r, ...) of every rank, in rank order, for row counts that differ by rank."""
    if get_world_size() == 1:
        return [x]
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [int(s) for s in all_gather(n)]
    pad = x.new_zeros((max(sizes) - x.shape[0], *x.shape[1:]))
    gathered = all_gather(torch.cat([x, pad]))
    chunk = max(sizes)
    return [gathered[r * chunk:r * chunk + s] for r, s in enumerate(sizes)]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (a copy)."""
    if get_world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y
