"""Reliability: kill -9 at random moments and resume exactly; unreadable last.pt; full disk."""
from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, assert_one_line_error, run_cli
from helpers_tiny import tiny_config, tiny_overrides
from sslkit import config
from sslkit.io.checkpoint import PREV_NAME, load_checkpoint, save_atomic
from sslkit.errors import CheckpointError

EXTRA = ["train.checkpoint_every_steps=1", "eval.knn_every=0", "run.tensorboard=false",
         "run.num_threads=1", "data.synthetic_train=128", "batchformer.dropout=0.5"]


def _argv(out: Path, epochs: int = 3, extra: tuple = ()) -> list[str]:
    items = tiny_overrides(out, bf=True, epochs=epochs, extra=[*EXTRA, *extra])
    return [a for it in items for a in ("--set", it)]


def _cmd(out: Path, resume: bool = False, extra: tuple = ()) -> list[str]:
    return [sys.executable, str(ROOT / "run_pretrain.py"), *(["--resume"] if resume else []),
            *_argv(out, extra=extra)]


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == 24  # 128 / 16 = 8 steps x 3 epochs
    return ckpt["model"]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("extra", [(), ("train.micro_batch=4", "method.bn_splits=4")],
                         ids=["whole-batch", "micro-batches"])
def test_kill_9_at_random_moments_then_resume_exactly(tmp_path, extra):
    """Also with micro-batches (gradient caching, the BatchFormer's dropout replayed)."""
    ref = tmp_path / "ref"
    proc = subprocess.run(_cmd(ref, extra=extra), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = _final_weights(ref)

    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    first = True
    for _ in range(8):
        p = subprocess.Popen(_cmd(out, resume=not first, extra=extra), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        first = False
        # wait until training runs (a step is logged), then kill at a random moment
        deadline = time.time() + 120
        metrics = out / "metrics.jsonl"
        while time.time() < deadline and p.poll() is None:
            if metrics.exists() and metrics.stat().st_size > 0:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        if p.poll() is not None:  # finished before the kill
            assert p.returncode == 0, p.stderr.read()[-3000:]
            break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
        # whatever moment it died, a complete checkpoint is on disk and loads
        ck = out / "checkpoints"
        good = [f for f in (ck / "last.pt", ck / PREV_NAME) if f.exists()]
        assert good, "no checkpoint survived the kill"
        load_checkpoint(good[0])
        if kills >= 3:
            break
    assert kills >= 2, "the runs finished before they could be killed; slow them down"
    proc = subprocess.run(_cmd(out, resume=True, extra=extra), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same(_final_weights(out), want)
    assert not list((out / "checkpoints").glob(".*.tmp-*"))  # torn temp files were removed


def test_unreadable_last_falls_back_to_prev(tmp_path):
    ref = tmp_path / "ref"
    assert subprocess.run(_cmd(ref), capture_output=True, timeout=600).returncode == 0
    out = tmp_path / "run"
    from helpers_tiny import tiny_config
    from sslkit.train.engine import pretrain
    cfg = tiny_config(out, bf=True, epochs=3, extra=EXTRA)
    pretrain(cfg, stop_after_steps=10)
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])  # torn / corrupted
    proc = subprocess.run(_cmd(out, resume=True), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "falling back to the previous checkpoint" in proc.stdout + proc.stderr
    _assert_same(_final_weights(out), _final_weights(ref))


def test_both_checkpoints_unreadable_is_one_line_error(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    for name in ("last.pt", PREV_NAME):
        (out / "checkpoints" / name).write_bytes(b"\x00garbage")
    config.save(tiny_config(out, bf=True, epochs=3, extra=EXTRA), out / "config.yaml")
    proc = run_cli("run_pretrain.py", "--resume", *_argv(out))
    assert_one_line_error(proc, "last.pt", "is not a PyTorch checkpoint")


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CheckpointError, match="disk is full.*previous checkpoint is kept"):
        save_atomic({"step": 2, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_full_disk_during_training_stops_with_one_line(tmp_path, monkeypatch, capsys):
    """Through the engine: the run stops with one error line and the old checkpoint stays."""
    from sslkit.io import checkpoint
    from sslkit.cli import pretrain_main

    out = tmp_path / "run"
    real = checkpoint.torch.save
    calls = {"n": 0}

    def flaky(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", flaky)
    code = pretrain_main(_argv(out))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "disk is full" in err[0]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2
