"""Loss spikes and their rollback (``train.spike_policy: rollback``; ``none`` leaves a run as
it was).

**A spike** is a step whose loss (the mean over processes, as logged) is not finite, or is
finite and above ``train.spike_factor`` times the median of the last ``train.spike_window``
good steps' losses. The window fills after the LR warmup (``optim.warmup_epochs``) and after
the method's settling steps (MoCo-v2: the K / keys-per-step steps that fill its queue with
real keys, while its loss rises from ~0; 16 in the demo, 256 in the ImageNet recipe), so a
finite spike is looked for from there + ``spike_window`` on, and a loss that moves with a
rising LR or a filling queue is not taken for one. Large-batch
MoCo-v3 runs are known to spike and diverge (Chen, Xie & He 2021, Sec. 4: the instability);
the fix applied by hand (the last checkpoint, a lower LR, start again) is what a rollback
does, without the restart.

**A rollback** restores the last good state and goes on from there: the method (weights,
momentum encoder, MoCo-v2's queue, BatchNorm statistics), the optimizer, the LR schedule,
the GradScaler, the online probe, the count of skipped steps and the window of losses; the
data order goes back with the step (the same batches again, with new augmentation draws:
the RNG is not rewound). From then on the LR is ``train.spike_lr_factor`` times the
schedule's for the rest of the run (each rollback multiplies again). The engine writes a
checkpoint of the restored step, so the file on disk never holds the abandoned steps.

**The last good state** is kept in memory, not read from disk: a snapshot every
``spike_window`` steps, which becomes the rollback target once the next snapshot is taken
(so a state is a target only after ``spike_window`` further steps without a spike: a spike
prepared by the steps just before it is not restored into). This costs two copies of the
method's state dict and of the optimizer's state on the training device (the ImageNet
recipes: ResNet-50 MoCo-v2 with SGD 2 x 0.37 GB, ResNet-50 MoCo-v3 with LARS 2 x 0.41 GB,
ViT-S MoCo-v3 with AdamW 2 x 0.68 GB; ``bench/health.py --sizes``) and one copy of them
every ``spike_window`` steps. A run starts (or resumes) with its first state as the
target, and a rollback makes the state it restored the target again.

**No progress.** A rollback that is followed by another spike before the run got past the
step of the first one counts as a retry; after ``train.spike_retries`` retries the next spike
stops the run with one line (:class:`~sslkit.train.step.TrainingDiverged`, exit code 2), the
last checkpoint kept.

**Non-finite losses.** With ``rollback`` a non-finite loss is a spike like any other:
``train.nan_policy`` then neither stops nor skips (:class:`~sslkit.train.step.TrainStep`
leaves the update out and the engine rolls back).

**Resume.** The LR factor, the window, the retry count and the step of the last spike are part
of the checkpoint (``last.pt["spikes"]``; the scheduler's state holds the scaled base LRs), so
a run resumed after a rollback goes on exactly as the uninterrupted one. A resumed run takes
its checkpoint as its first target: a spike within ``2 x spike_window`` steps of a resume
restores that checkpoint, where the uninterrupted run would restore its own older snapshot.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import statistics
from collections import deque
from typing import Optional

import torch
from torch import nn

from sslkit.config import TrainConfig
from sslkit.train.step import TrainingDiverged, TrainStep


@dataclasses.dataclass(frozen=True)
class Rollback:
    """What a rollback did: the spike (``step``, ``loss``), the step it went back to and the
    LR factor in force from then on."""

    step: int
    loss: float
    to_step: int
    lr_factor: float

    def record(self) -> dict:
        """The ``metrics.jsonl`` line of the rollback."""
        return {"event": "rollback", "step": self.step, "loss": self.loss,
                "lr_factor": self.lr_factor, "to_step": self.to_step}

    def text(self, factor: float, median: Optional[float]) -> str:
        why = ("not finite" if not math.isfinite(self.loss) else
               f"over {factor:g} x the median {median:.4g} of the window")
        return (f"loss spike at step {self.step}: {self.loss:.4g} ({why}); rolled back to "
                f"step {self.to_step}; the LR is x{self.lr_factor:g} from now on")


class SpikeGuard:
    """``check(step, loss)`` after each step: keeps the loss (and every ``spike_window`` steps
    a snapshot), or rolls back a spike and returns what it did. Holds nothing and does nothing
    with ``train.spike_policy: none``."""

    def __init__(self, cfg: TrainConfig, method: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler, scaler: torch.amp.GradScaler, stepper: TrainStep,
                 probe: Optional[nn.Module] = None, warmup: int = 0):
        """``warmup``: the steps whose losses stay out of the window (the LR warmup and the
        method's settling steps)."""
        self.cfg, self.on, self.warmup = cfg, cfg.spike_policy == "rollback", warmup
        self.method, self.optimizer, self.scheduler = method, optimizer, scheduler
        self.scaler, self.stepper, self.probe = scaler, stepper, probe
        self.window: deque[float] = deque(maxlen=cfg.spike_window)
        self.lr_factor, self.retries, self.rollbacks, self.spike_step = 1.0, 0, 0, -1
        self.target: Optional[dict] = None   # the state a rollback restores
        self.pending: Optional[dict] = None  # the newest snapshot, the target to be
        self.median: Optional[float] = None  # the window's median at the last spike

    # ----------------------------------------------------------------- checkpointed state
    def state_dict(self) -> dict:
        return {"lr_factor": self.lr_factor, "window": list(self.window),
                "retries": self.retries, "rollbacks": self.rollbacks,
                "spike_step": self.spike_step}

    def load_state_dict(self, state: Optional[dict]) -> None:
        """A checkpoint's ``spikes`` entry (absent in a run that never had one: no change)."""
        if not state:
            return
        self.lr_factor = float(state["lr_factor"])
        self.window = deque((float(x) for x in state["window"]), maxlen=self.cfg.spike_window)
        self.retries, self.rollbacks = int(state["retries"]), int(state["rollbacks"])
        self.spike_step = int(state["spike_step"])

    # ----------------------------------------------------------------- snapshots
    def start(self, step: int) -> None:
        """Training starts (or resumes) at ``step``: its state is the first target."""
        if self.on:
            self.target, self.pending = self.snapshot(step), None

    def snapshot(self, step: int) -> dict:
        """A copy of the state a rollback restores (what the guard keeps every window)."""
        return copy.deepcopy({
            "step": step, "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "skipped": self.stepper.skipped,
            "probe": self.probe.state_dict() if self.probe is not None else None,
            "window": list(self.window)})

    def _restore(self, snap: dict) -> None:
        snap = copy.deepcopy(snap)  # the optimizer adopts the tensors it is given
        self.method.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        self.scheduler.load_state_dict(snap["scheduler"])
        self.scaler.load_state_dict(snap["scaler"])
        if self.probe is not None:
            self.probe.load_state_dict(snap["probe"])
        self.stepper.skipped = snap["skipped"]
        self.window = deque(snap["window"], maxlen=self.cfg.spike_window)
        # the LR factor for the rest of the run: the schedule's base LRs scaled, and the LR
        # of the next step with them (the scheduler's state, hence the checkpoint, keeps it)
        sched = self.scheduler
        sched.base_lrs = [g["initial_lr"] * self.lr_factor for g in self.optimizer.param_groups]
        for g, base, fn in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            g["lr"] = base * fn(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # ----------------------------------------------------------------- the check
    def is_spike(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        return (len(self.window) == self.window.maxlen
                and loss > self.cfg.spike_factor * statistics.median(self.window))

    def check(self, step: int, loss: float) -> Optional[Rollback]:
        """After ``step`` steps, the last with ``loss``: None for a good step (kept in the
        window; a snapshot every ``spike_window`` steps), else the rollback done. Raises
        TrainingDiverged at a spike after ``spike_retries`` rollbacks without progress."""
        if not self.on:
            return None
        if not self.is_spike(loss):
            if step > self.spike_step:
                self.retries = 0  # got past the last spike
            if step > self.warmup:
                self.window.append(loss)
            if step % self.cfg.spike_window == 0:
                self.target = self.pending if self.pending is not None else self.target
                self.pending = self.snapshot(step)
            return None
        self.median = statistics.median(self.window) if self.window else None
        if self.retries >= self.cfg.spike_retries:
            raise TrainingDiverged(
                f"the loss spiked again at step {step} ({loss:.4g}) after "
                f"{self.retries} rollback(s) without getting past step {self.spike_step} (LR "
                f"now x{self.lr_factor:g}); stopped, the last checkpoint is kept; lower "
                f"optim.lr or raise optim.warmup_epochs (train.spike_retries="
                f"{self.cfg.spike_retries})")
        self.retries += 1
        self.rollbacks += 1
        self.spike_step = max(self.spike_step, step)
        self.lr_factor *= self.cfg.spike_lr_factor
        self._restore(self.target)
        self.pending = None  # the restored state stays the target until the next snapshot
        return Rollback(step, loss, self.target["step"], self.lr_factor)
