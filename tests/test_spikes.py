"""Loss-spike rollback (train.spike_policy: rollback): the guard's bookkeeping, an injected
spike rolled back in a run that then finishes, exact resume after a rollback, and a run
whose loss keeps exploding stopped after its retries with one line."""
from __future__ import annotations

import json
import math
import types

import pytest
import torch
from torch import nn

from conftest import run_cli
from helpers_tiny import tiny_config, tiny_overrides
from sslkit.config import TrainConfig
from sslkit.io.checkpoint import load_checkpoint
from sslkit.train.engine import Trainer
from sslkit.train.metrics import MetricsLog
from sslkit.train.spikes import SpikeGuard
from sslkit.train.step import TrainingDiverged

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- the guard
def _guard(**kw):
    """A guard over a one-weight model whose weight is the number of steps taken."""
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    cfg = TrainConfig(spike_policy="rollback", spike_window=4, spike_factor=2.0,
                      spike_lr_factor=0.5, spike_retries=2, **kw)
    stepper = types.SimpleNamespace(skipped=0)
    guard = SpikeGuard(cfg, model, opt, sched, torch.amp.GradScaler("cpu", enabled=False),
                       stepper)

    def step(n: int, loss: float):
        with torch.no_grad():
            model.weight.fill_(n)
        opt.step()
        sched.step()
        return guard.check(n, loss)
    guard.start(0)
    return guard, model, opt, sched, step


def test_a_spike_restores_the_snapshot_that_outlived_a_window():
    guard, model, opt, sched, step = _guard()
    assert all(step(n, 1.0) is None for n in range(1, 10))  # snapshots of steps 4 and 8
    back = step(10, 3.0)  # over 2 x the median 1 of the last 4 losses
    # the step-8 snapshot has not outlived a window yet: the target is the step-4 state
    assert (back.step, back.loss, back.to_step, back.lr_factor) == (10, 3.0, 4, 0.5)
    assert float(model.weight.detach()) == 4.0 and sched.last_epoch == 4
    # the schedule's LR of the next step, halved: base 0.1, lambda(4) = 1/5
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 / 5)
    assert sched.base_lrs == [pytest.approx(0.05)]
    assert guard.state_dict() == {"lr_factor": 0.5, "window": [1.0, 1.0, 1.0, 1.0],
                                  "retries": 1, "rollbacks": 1, "spike_step": 10}
    assert back.record() == {"event": "rollback", "step": 10, "loss": 3.0, "lr_factor": 0.5,
                             "to_step": 4}


def test_a_non_finite_loss_is_a_spike_a_finite_one_waits_for_a_full_window():
    guard, model, opt, sched, step = _guard()
    assert step(1, 1.0) is None and step(2, 100.0) is None  # 2 of 4 losses: no median yet
    assert step(3, float("inf")).to_step == 0  # the state the run started from
    assert float(model.weight.detach()) == 0.0 and list(guard.window) == []


def test_retries_without_progress_stop_with_one_line_and_progress_resets_them():
    guard, model, opt, sched, step = _guard()
    for n in range(1, 9):
        step(n, 1.0)
    assert step(9, 5.0).to_step == 4  # the step-4 snapshot outlived the window by step 8
    assert [step(n, 1.0) for n in (5, 6)] == [None, None]
    assert step(7, 5.0).to_step == 4 and guard.retries == 2  # before step 9: no progress
    for n in range(5, 11):
        step(n, 1.0)  # past step 9: progress
    assert guard.retries == 0
    assert step(11, 5.0) is not None and step(11, 5.0) is not None  # two more rollbacks
    with pytest.raises(TrainingDiverged, match=r"spiked again at step 11 \(5\) after 2 "
                                               r"rollback\(s\) without getting past step 11"):
        step(11, 5.0)


def test_policy_none_keeps_nothing():
    model = nn.Linear(1, 1)
    guard = SpikeGuard(TrainConfig(), model, torch.optim.SGD(model.parameters(), lr=0.1),
                       None, None, types.SimpleNamespace(skipped=0))
    guard.start(0)
    assert guard.check(1, float("nan")) is None and guard.target is None
    assert not guard.window


# --------------------------------------------------------------------------- runs
SPIKY = ["eval.knn_every=0", "run.aug_grid_every=0", "run.tensorboard=false",
         "train.spike_policy=rollback", "train.spike_window=4"]


class Killed(Exception):
    """Stands in for kill -9: the run ends where it is, nothing more written."""


def inject(trainer: Trainer, spike_at: int, kill_at: int | None = None) -> None:
    """The ``spike_at``-th forward pass returns 100 x its loss (a finite spike); the
    ``kill_at``-th raises :class:`Killed`."""
    real, calls = trainer.stepper.model, {"n": 0}

    def model(v1, v2):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise Killed()
        loss, stats = real(v1, v2)
        return (loss * 100 if calls["n"] == spike_at else loss), stats

    trainer.stepper.model = model


def _records(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_an_injected_spike_rolls_back_and_resume_after_it_is_exact(tmp_path):
    """12 steps; the 10th forward pass spikes: back to the step-4 snapshot, the LR halved,
    the run finishes. The same run killed 3 steps after the rollback and resumed from the
    checkpoint the rollback wrote ends with the same weights."""
    ref = tmp_path / "ref"
    base = Trainer(tiny_config(tmp_path / "base", epochs=3, extra=SPIKY))
    base.fit()
    trainer = Trainer(tiny_config(ref, epochs=3, extra=SPIKY))
    inject(trainer, spike_at=10)
    summary = trainer.fit()
    assert summary.steps == 12 and summary.rollbacks == 1 and summary.lr_factor == 0.5
    recs = _records(ref)
    events = [r for r in recs if r.get("event")]
    assert events == [{"event": "rollback", "step": 10, "loss": events[0]["loss"],
                       "lr_factor": 0.5, "to_step": 4}]
    assert events[0]["loss"] > 100
    lr = {r["step"]: r["lr"] for r in _records(tmp_path / "base") if "lr" in r}
    after = [r for r in recs[recs.index(events[0]) + 1:] if "lr" in r]
    assert [r["step"] for r in after] == list(range(5, 13))
    assert all(r["lr"] == pytest.approx(0.5 * lr[r["step"]]) for r in after)
    assert load_checkpoint(ref / "checkpoints" / "last.pt")["spikes"]["lr_factor"] == 0.5

    out = tmp_path / "killed"
    cfg = tiny_config(out, epochs=3, extra=SPIKY)
    killed = Trainer(cfg)
    inject(killed, spike_at=10, kill_at=13)  # passes 11, 12: steps 5, 6 after the rollback
    with pytest.raises(Killed):
        killed.fit()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4  # the rollback's
    Trainer(cfg, resume=True).fit()
    want, got = (load_checkpoint(d / "checkpoints" / "last.pt")["model"] for d in (ref, out))
    assert all(torch.equal(want[k], got[k]) for k in want)
    # the history before the rollback is kept, the killed run's steps 5, 6 are not twice
    steps = [r.get("event", r["step"]) for r in _records(out)]
    assert steps == [*range(1, 10), "rollback", *range(5, 13)]


def test_an_exploding_loss_stops_after_the_retries_with_one_line(tmp_path):
    out = tmp_path / "run"
    # inf weights after the first step, a NaN loss at the second, at every retry
    items = tiny_overrides(out, epochs=3, extra=[*SPIKY, "optim.lr=1e30", "run.num_threads=1"])
    proc = run_cli("run_pretrain.py", *[a for it in items for a in ("--set", it)])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and "the loss spiked again at step" in lines[0], lines
    assert "after 3 rollback(s)" in lines[0] and "train.spike_retries=3" in lines[0]
    rollbacks = [r for r in _records(out) if r.get("event") == "rollback"]
    assert [r["lr_factor"] for r in rollbacks] == [0.5, 0.25, 0.125]
    assert all(r["step"] == 2 and r["to_step"] == 0 and math.isnan(r["loss"])
               for r in rollbacks)  # train.nan_policy=stop did not stop it: a rollback


def test_resume_keeps_the_history_a_rollback_left(tmp_path):
    """metrics.jsonl on resume at step 4: the lines up to the last rollback to step <= 4
    stay (the abandoned steps are history), the later lines past step 4 go."""
    lines = [{"step": s, "loss": 1.0} for s in range(1, 8)]
    lines += [{"event": "rollback", "step": 8, "loss": 9.0, "lr_factor": 0.5, "to_step": 3}]
    lines += [{"step": s, "loss": 1.0} for s in range(4, 7)]  # killed at step 6
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    MetricsLog(tmp_path, True, False, start_step=4).close()
    kept = _records(tmp_path)
    assert kept == lines[:8] + [{"step": 4, "loss": 1.0}]


def test_tensorboard_has_the_health_group_and_the_rollback_text(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    cfg = tiny_config(tmp_path / "run", epochs=2, extra=[
        "eval.knn_every=0", "run.aug_grid_every=0", "train.spike_policy=rollback",
        "train.spike_window=2"])
    trainer = Trainer(cfg)
    assert trainer.spikes.warmup == 4  # the queue of 64 keys fills in 4 steps of 16
    inject(trainer, spike_at=8)  # the window holds steps 6 and 7
    trainer.fit()
    tags: dict[str, list] = {}
    for path in sorted((tmp_path / "run" / "tb").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                tags.setdefault(v.tag, []).append(v)
    assert {"health/rankme", "health/embed_std", "health/align", "health/uniform"} <= set(tags)
    assert "1_train/rankme" not in tags and "health/to_step" not in tags
    text = tags["health/rollback/text_summary"][0].tensor.string_val[0].decode()
    assert text.startswith("loss spike at step 8: ") and "rolled back to step 4" in text
