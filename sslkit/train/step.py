"""One optimizer step of pretraining, as the engine runs it and as every benchmark times it.

    views (kornia, on the device) -> method(view1, view2) under autocast -> loss
    -> non-finite guard -> backward (GradScaler) -> [gradient clip] -> optimizer step
    -> [online probe] -> LR schedule step -> momentum (EMA) update

With ``train.micro_batch`` the forward and backward run N images at a time
(:mod:`sslkit.train.microbatch`) and the gradients are all-reduced once over the processes.

:class:`TrainStep` holds what a step needs (the method and its DDP wrapper, the optimizer,
LR scheduler, GradScaler, online probe, the input's ``to_views``) and nothing of the loop
around it (data order, logging, checkpoints: :mod:`sslkit.train.engine`). Each phase runs inside a
``torch.profiler.record_function`` range named in :data:`PHASES` (MoCo-v2's queue update,
inside the forward pass, is ``sslkit.queue``), so a profiler trace of a real run, or
``bench/breakdown.py``, shows where a step's time goes; without a profiler the ranges cost
a few microseconds.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch
from torch import nn
from torch.profiler import record_function

from sslkit import distributed as dist_utils
from sslkit.config import Config
from sslkit.errors import UserError
from sslkit.train.optim import cosine_momentum
from sslkit.train.microbatch import all_reduce_grads, micro_step
from sslkit.train.runtime import autocast

# The profiler ranges of a step, in order (``sslkit.data`` is the engine's wait for a batch).
PHASES = ("sslkit.data", "sslkit.augment", "sslkit.forward", "sslkit.queue", "sslkit.backward",
          "sslkit.optimizer", "sslkit.ema")


class TrainingDiverged(UserError):
    """The loss became NaN/inf (train.nan_policy=stop)."""


@dataclasses.dataclass
class StepResult:
    """What one optimizer step reports: the loss (mean over processes), the LR and EMA
    momentum it used, and the method's stats (detached tensors)."""

    loss: float
    lr: float
    momentum: float
    stats: dict[str, torch.Tensor]


class TrainStep:
    """``step(images, labels, step) -> StepResult``: one optimizer step on a batch of uint8
    images (``step`` steps done before it; it sets the EMA momentum of the schedule); the
    labels serve the online probe only. ``step_on_views`` starts from views made elsewhere
    (a reference pipeline's, in the benchmarks).

    A non-finite loss stops the run (``train.nan_policy: stop``) or skips the step
    (``skip``). The forward pass has already written the batch into the method's buffers
    (MoCo-v2's queue and its pointer, BN running statistics), so a skipped step restores
    them from a copy taken before it and leaves out the momentum update: it leaves no
    trace but the LR schedule's step and the count of skipped steps (``skipped``). With
    ``train.spike_policy: rollback`` a non-finite loss only leaves out the update: the engine
    then restores the whole state of an earlier step (:mod:`sslkit.train.spikes`).
    """

    def __init__(self, cfg: Config, method: nn.Module, model: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
                 to_views: Callable, device: torch.device, precision: str, total_steps: int,
                 steps_per_epoch: int, probe: Optional[nn.Module] = None):
        self.cfg, self.method, self.model = cfg, method, model
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.to_views, self.device, self.precision = to_views, device, precision
        self.total_steps, self.steps_per_epoch, self.probe = total_steps, steps_per_epoch, probe
        self.micro_batch = cfg.train.micro_batch
        self.skipped = 0

    def momentum(self, step: int) -> float:
        """The EMA momentum of step ``step`` (0-based): constant, or MoCo-v3's cosine."""
        m = self.cfg.method
        return (cosine_momentum(step, self.total_steps, m.momentum)
                if m.momentum_schedule == "cosine" else m.momentum)

    def step(self, images, labels: torch.Tensor, step: int) -> StepResult:
        with record_function("sslkit.augment"):
            view1, view2 = self.to_views(images)
            if self.cfg.run.channels_last:
                view1 = view1.contiguous(memory_format=torch.channels_last)
                view2 = view2.contiguous(memory_format=torch.channels_last)
        return self.step_on_views(view1, view2, labels, step)

    def _backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step_on_views(self, view1: torch.Tensor, view2: torch.Tensor, labels: torch.Tensor,
                      step: int) -> StepResult:
        cfg = self.cfg
        saved = ([b.detach().clone() for b in self.method.buffers()]
                 if cfg.train.nan_policy == "skip" else None)
        self.optimizer.zero_grad(set_to_none=True)
        micro = self.micro_batch if self.micro_batch and self.micro_batch < view1.shape[0] else 0
        with record_function("sslkit.forward"):
            if micro:  # forward and backward, N images at a time (sslkit.train.microbatch)
                loss, stats = micro_step(self.method, view1, view2, micro, self._backward,
                                         self.device, self.precision)
            else:
                with autocast(self.device, self.precision):
                    loss, stats = self.model(view1, view2)
        # the mean over ranks: a NaN anywhere stops (or skips) every rank alike
        loss_value = float(dist_utils.all_reduce_mean(loss.detach().float()))
        finite = math.isfinite(loss_value)
        if not finite and cfg.train.spike_policy == "rollback":
            pass  # a spike: no update; the engine restores the last good state (train/spikes.py)
        elif not finite:
            if cfg.train.nan_policy == "stop":
                raise TrainingDiverged(
                    f"loss is {loss_value} at step {step + 1} (epoch "
                    f"{step // self.steps_per_epoch + 1}); stopped with the last finite "
                    f"checkpoint kept; lower optim.lr or set train.nan_policy=skip")
            with torch.no_grad():
                for buf, copy in zip(self.method.buffers(), saved):
                    buf.copy_(copy)
            self.skipped += 1
        else:
            with record_function("sslkit.backward"):
                if micro:  # the gradients are there: one all-reduce over the processes
                    all_reduce_grads(list(self.method.parameters()))
                else:
                    self._backward(loss)
            with record_function("sslkit.optimizer"):
                if cfg.optim.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.method.parameters(), cfg.optim.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            if self.probe is not None:
                self.probe.step(self.method.features, labels)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        m = self.momentum(step)
        if finite:
            with record_function("sslkit.ema"):
                self.method.momentum_update(m)
        return StepResult(loss_value, lr, m, stats)
