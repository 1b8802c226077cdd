"""A run's life on a cluster: stop signals, one agreement of every process per step, the
wall-clock checkpoint cadence, and a lost process explained in one line.

**Signals.** While :meth:`Trainer.fit` runs, SIGTERM and SIGUSR1 only record themselves
(:class:`StopSignals`): the handler sets a number and returns, with no I/O and no exception,
so a signal (a second one included) can never cut a checkpoint write in half. The loop reads
the flag between steps; the run writes a checkpoint of the step it has reached and exits
with :func:`stop_exit_code`: 128 + the signal's number (143 for SIGTERM, 138 for SIGUSR1), the
status a shell reports for a process that signal ended. A non-zero status, because the run is
not finished: ``run_pretrain.py && run_lincls.py`` stops there, SLURM does not account the
step as completed, and torchrun's elastic agent (which only sends signals when it is itself
shutting down, or restarting a failed group) does not mistake the stop for the end of a run.
DataLoader workers ignore both signals (:func:`sslkit.distributed.ignore_stop_signals`):
torchrun and SLURM signal a worker's whole process group, and a loader worker that died of it
would fail the next batch of a run that is saving itself.

**Agreement.** Under torchrun every rank must stop after the same step, or the ranks would
wait for each other in different collectives. :meth:`Lifecycle.poll` runs once per step: one
all-reduce (MAX) of three integers on the training device (NCCL needs a device tensor; gloo
runs on the CPU): the stop signal's number, whether rank 0's wall clock says a checkpoint is
due (``train.checkpoint_every_minutes``: rank 0 decides, every rank follows), and whether a
rank failed to get its batch (a :class:`~sslkit.errors.UserError` such as a corrupt image, so
that every rank ends with that line instead of waiting for the failed one).
:func:`agree` does the same for the work one rank does while the others wait (checkpoint
writes, the online kNN, the run-directory checks at the start).

**A lost process.** :func:`explain_lost_process` turns what the process group raises when a
collective waited ``run.dist_timeout_s`` (a frozen rank, a dead node) or a peer vanished into
one line (:class:`~sslkit.errors.ProcessGroupError`, exit code 3).
"""
from __future__ import annotations

import dataclasses
import re
import signal
import threading
import time
from typing import Callable, Optional

import torch

from sslkit import distributed as dist_utils
from sslkit.distributed import STOP_SIGNALS
from sslkit.errors import ProcessGroupError, UserError

def stop_exit_code(signum: int) -> int:
    """The exit status of a run stopped by ``signum`` after its checkpoint: 128 + signum."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """While installed, SIGTERM and SIGUSR1 set :attr:`received` (the first one's number) and
    nothing else. Installing outside the main thread (where Python cannot set handlers) is a
    no-op; :meth:`restore` puts the previous handlers back."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, object] = {}

    def _record(self, signum: int, frame) -> None:  # the handler: no I/O, no exception
        if not self.received:
            self.received = signum

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._record)
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What every rank agreed on at a poll."""

    stop: int          # the number of the stop signal some rank received (0: none)
    checkpoint: bool   # rank 0's clock: train.checkpoint_every_minutes have passed
    failed: bool       # some rank could not get its batch (a user error)


class Lifecycle:
    """The per-step agreement (:meth:`poll`) and the wall-clock cadence of one run."""

    def __init__(self, every_minutes: Optional[float], device: torch.device, main: bool,
                 signals: StopSignals):
        self.every_s = every_minutes * 60.0 if every_minutes else None
        self.device, self.main, self.signals = device, main, signals
        self.restart_clock()

    def restart_clock(self) -> None:
        """Training starts, or a checkpoint was written: the wall-clock cadence counts from
        now."""
        self._last = time.monotonic()

    def poll(self, failed: bool = False) -> Verdict:
        """Every rank calls this at the same point of each step (a collective under torchrun)."""
        due = bool(self.main and self.every_s is not None
                   and time.monotonic() - self._last >= self.every_s)
        flags = [int(self.signals.received), int(due), int(failed)]
        if dist_utils.get_world_size() > 1:
            flags = dist_utils.all_reduce_max(
                torch.tensor(flags, dtype=torch.int32, device=self.device)).tolist()
        return Verdict(int(flags[0]), bool(flags[1]), bool(flags[2]))


def agree(problem: Optional[UserError]) -> None:
    """A collective end of work some ranks did alone: when any rank met a user error, every
    rank raises it (the same one line), none waits for a rank that has left."""
    if dist_utils.get_world_size() == 1:
        if problem is not None:
            raise problem
        return
    messages = dist_utils.all_gather_object(None if problem is None else str(problem))
    if problem is not None:
        raise problem
    for message in messages:
        if message is not None:
            raise UserError(message)


def together(fn: Callable[[], object]) -> None:
    """Run ``fn`` on every rank; a user error it raises on any rank is raised on every rank
    (``fn`` itself must not enter a collective that a failed rank would miss)."""
    problem = None
    try:
        fn()
    except UserError as e:
        problem = e
    agree(problem)


def agree_on(value, what: str) -> None:
    """Refuse to go on when the ranks hold different values of ``value`` (e.g. the step each
    resumes from): a run whose processes see different files would train different models."""
    if dist_utils.get_world_size() == 1:
        return
    values = dist_utils.all_gather_object(value)
    if any(v != values[0] for v in values):
        seen = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise UserError(f"the processes disagree on {what} ({seen}); run.output_dir must be "
                        f"one directory that every node sees (a shared file system)")


_TIMEOUT = re.compile(r"timed out|timeout", re.IGNORECASE)
_PEER = re.compile(r"connection (reset|closed) by peer|broken pipe|connection refused|"
                   r"remote (process|peer)", re.IGNORECASE)


def explain_lost_process(e: BaseException, timeout_s: int) -> Optional[ProcessGroupError]:
    """One line for a collective that timed out or lost its peer, or None for any other
    error (which keeps its traceback). Only meaningful under torchrun."""
    if not isinstance(e, (RuntimeError, ConnectionError)) or dist_utils.get_world_size() == 1:
        return None
    text = str(e)
    rank = dist_utils.get_rank()
    if _TIMEOUT.search(text):
        return ProcessGroupError(
            f"a process did not answer within run.dist_timeout_s={timeout_s} s (rank {rank}: a "
            f"collective timed out); a process is frozen or its node is lost; the same command "
            f"with --auto-resume continues from the last checkpoint (raise run.dist_timeout_s "
            f"if a process legitimately waits longer)")
    if _PEER.search(text):
        return ProcessGroupError(
            f"another process of the run ended or was killed (rank {rank} lost its connection "
            f"to it; its own error line, if it left one, says why); the same command with "
            f"--auto-resume continues from the last checkpoint")
    return None
