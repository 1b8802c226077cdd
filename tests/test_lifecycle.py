"""Cluster life: stop signals, --auto-resume, torchrun restarts and a frozen rank (CPU, gloo).

The end-to-end tests run the real command line and synchronise on what the run writes
(metrics.jsonl lines, the stop line), never on sleeps; every process they start is ended in
``finally`` (each launch is its own session, killed as a group).
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from helpers_tiny import tiny_overrides
from sslkit import distributed as dist_utils
from sslkit.train import lifecycle
from sslkit.io.checkpoint import load_checkpoint
from sslkit.errors import ProcessGroupError, UserError

pytestmark = pytest.mark.usefixtures("one_thread")

# 512 synthetic images, global batch 16: 32 steps per epoch (8 images per rank under torchrun)
EXTRA = ["eval.knn_every=0", "run.tensorboard=false", "run.num_threads=1",
         "data.synthetic_train=512", "run.aug_grid_every=0"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
STOP_LINE = re.compile(r"^stopped by (SIGTERM|SIGUSR1) at step (\d+); checkpoint saved; the "
                       r"same command with --auto-resume continues$", re.MULTILINE)


# --------------------------------------------------------------------------- helpers
def _sets(out: Path, epochs: int, extra=()) -> list[str]:
    items = tiny_overrides(out, bf=True, epochs=epochs, extra=[*EXTRA, *extra])
    return [a for it in items for a in ("--set", it)]


def _pretrain_cmd(out: Path, epochs: int, extra=()) -> list[str]:
    return [sys.executable, str(ROOT / "run_pretrain.py"), "--auto-resume",
            *_sets(out, epochs, extra)]


def _torchrun_cmd(out: Path, epochs: int, extra=(), restarts: int = 0) -> list[str]:
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    return [torchrun, "--standalone", "--nproc_per_node=2", f"--max-restarts={restarts}",
            str(ROOT / "run_pretrain.py"), "--auto-resume", *_sets(out, epochs, extra)]


class Launch:
    """A command in its own session, its output in a file; killed as a group at exit."""

    def __init__(self, cmd: list[str], log: Path):
        self.log = log
        self.fh = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=self.fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def __enter__(self) -> "Launch":
        return self

    def __exit__(self, *exc) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.fh.close()

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def output(self) -> str:
        self.fh.flush()
        return self.log.read_text()


def _logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(ln)["step"] for ln in path.read_text().splitlines()
            if ln.strip().endswith("}") and '"loss"' in ln]


def _wait_for_step(out: Path, step: int, launch: Launch, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = _logged_steps(out)
        if steps and steps[-1] >= step:
            return
        assert launch.proc.poll() is None, f"the run ended early:\n{launch.output[-3000:]}"
        time.sleep(0.01)
    raise AssertionError(f"no step {step} within {timeout} s:\n{launch.output[-3000:]}")


def _worker_pids(agent_pid: int) -> dict[int, int]:
    """{rank: pid} of the workers torchrun's agent has started (from /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) != agent_pid:
                continue
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for kv in env:
            if kv.startswith(b"RANK="):
                found[int(kv[5:])] = int(entry)
    return found


def _run(cmd: list[str], log: Path, timeout: float = 600) -> str:
    with Launch(cmd, log) as run:
        code = run.wait(timeout)
        assert code == 0, run.output[-4000:]
        return run.output


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoints" / "last.pt")["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- units
def test_stop_signals_only_record_and_restore():
    before = signal.getsignal(signal.SIGTERM)
    signals = lifecycle.StopSignals().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)  # a second signal: recorded nowhere, raises nothing
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGTERM) == before
    assert lifecycle.stop_exit_code(signal.SIGTERM) == 143
    assert lifecycle.stop_exit_code(signal.SIGUSR1) == 138


def test_time_cadence_is_rank_0s_clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(lifecycle.time, "monotonic", lambda: now[0])
    life = lifecycle.Lifecycle(0.5, torch.device("cpu"), True, lifecycle.StopSignals())
    assert not life.poll().checkpoint
    now[0] += 29.0
    assert not life.poll().checkpoint
    now[0] += 1.0  # 30 s = 0.5 min
    assert life.poll().checkpoint
    life.restart_clock()  # a checkpoint was written
    assert not life.poll().checkpoint
    now[0] += 3600
    other_rank = lifecycle.Lifecycle(0.5, torch.device("cpu"), False, lifecycle.StopSignals())
    assert not other_rank.poll().checkpoint  # only rank 0's clock counts
    assert not lifecycle.Lifecycle(None, torch.device("cpu"), True,
                                   lifecycle.StopSignals()).poll().checkpoint


def _agreement_worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=2, timeout=datetime.timedelta(seconds=60))
    signals = lifecycle.StopSignals()
    due = lifecycle.Lifecycle(1e-9, torch.device("cpu"), rank == 0, signals)
    result = {"quiet": due.poll()}
    life = lifecycle.Lifecycle(None, torch.device("cpu"), rank == 0, signals)
    if rank == 1:
        signals.received = int(signal.SIGUSR1)
    result["signal"] = life.poll()
    result["failed"] = life.poll(failed=rank == 1)
    try:
        lifecycle.agree(UserError("rank 1 could not read image x.jpg") if rank == 1 else None)
    except UserError as e:
        result["agreed"] = str(e)
    try:
        lifecycle.agree_on(0, "a test value")
        result["agree_on_equal"] = "ok"
        lifecycle.agree_on(rank, "a test value")
    except UserError as e:
        result["agree_on"] = str(e)
    torch.save({k: (v.__dict__ if hasattr(v, "__dict__") else v) for k, v in result.items()},
               os.path.join(out, f"rank{rank}.pt"))
    tdist.barrier()
    tdist.destroy_process_group()


def test_ranks_agree_on_stop_checkpoint_and_errors(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_agreement_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r in results:
        # rank 0's clock (due at once here) reaches rank 1; nothing else was raised
        assert r["quiet"] == {"stop": 0, "checkpoint": True, "failed": False}
        assert r["signal"] == {"stop": int(signal.SIGUSR1), "checkpoint": False,
                               "failed": False}  # rank 1's signal stops rank 0 too
        assert r["failed"]["failed"] is True
        assert r["agreed"] == "rank 1 could not read image x.jpg"  # the same line everywhere
        assert r["agree_on_equal"] == "ok"
        assert "disagree on a test value (rank 0: 0, rank 1: 1)" in r["agree_on"]


def test_lost_process_is_one_line(monkeypatch):
    monkeypatch.setattr(lifecycle.dist_utils, "get_world_size", lambda: 2)
    monkeypatch.setattr(lifecycle.dist_utils, "get_rank", lambda: 0)
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed "
                        "out waiting 30000ms for recv operation to complete")
    e = lifecycle.explain_lost_process(gloo, 30)
    assert isinstance(e, ProcessGroupError)
    assert str(e).startswith("a process did not answer within run.dist_timeout_s=30 s (rank 0")
    peer = RuntimeError("[pair.cc:545] Read error [127.0.0.1]:1: Connection reset by peer.")
    assert "another process of the run ended" in str(lifecycle.explain_lost_process(peer, 30))
    assert lifecycle.explain_lost_process(RuntimeError("shape mismatch"), 30) is None
    monkeypatch.setattr(lifecycle.dist_utils, "get_world_size", lambda: 1)
    assert lifecycle.explain_lost_process(gloo, 30) is None  # one process: not ours to explain


def test_process_group_gets_the_timeout_and_nccl_error_handling(monkeypatch):
    calls = {}
    monkeypatch.setattr(dist_utils, "launched_by_torchrun", lambda: True)
    monkeypatch.setattr(dist_utils, "is_distributed", lambda: False)
    monkeypatch.setattr(dist_utils.torch.cuda, "set_device", lambda i: None)
    monkeypatch.setattr(dist_utils.dist, "init_process_group", lambda **kw: calls.update(kw))
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    assert dist_utils.init_distributed("cuda", timeout_s=30)
    assert calls == {"backend": "nccl", "timeout": datetime.timedelta(seconds=30)}
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")  # a choice of the user stays
    dist_utils.init_distributed("cuda", timeout_s=30)
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"


def test_each_torchrun_attempt_has_its_own_store_keys(monkeypatch):
    """torchrun's agent keeps one store over its restarts: an attempt must not read the keys
    (addresses, barrier counts) of the attempt before it."""
    import torch.distributed as tdist

    server = tdist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                            timeout=datetime.timedelta(seconds=30))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")
    timeout = datetime.timedelta(seconds=30)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    dist_utils._attempt_store(timeout).set("rank_1", "stale address")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert not dist_utils._attempt_store(timeout).check(["rank_1"])
    assert server.get("sslkit/attempt_0/rank_1") == b"stale address"
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")  # several agents count restarts apart
    assert dist_utils._attempt_store(timeout) is None


# --------------------------------------------------------------------------- one process
def test_sigterm_and_sigusr1_checkpoint_then_the_same_command_finishes_equal(tmp_path):
    """Signals at steps with no checkpoint due (one epoch of 32 steps): a checkpoint of the step
    reached, exit 128 + signal, the stop line; the same --auto-resume command continues to
    the weights of an uninterrupted run and then answers 'already finished'."""
    ref = tmp_path / "ref"
    ref.mkdir()  # --auto-resume in an empty directory: a new run
    _run(_pretrain_cmd(ref, epochs=1), tmp_path / "ref.log")

    out = tmp_path / "run"  # absent: a new run
    stops = []
    for i, (sig, at) in enumerate([(signal.SIGTERM, 2), (signal.SIGUSR1, None)]):
        with Launch(_pretrain_cmd(out, epochs=1), tmp_path / f"stop{i}.log") as run:
            _wait_for_step(out, at if at is not None else stops[-1] + 3, run)
            run.proc.send_signal(sig)
            run.proc.send_signal(sig)  # a second signal, during the step or the save
            assert run.wait(120) == 128 + sig, run.output[-3000:]
            text = run.output
        found = STOP_LINE.findall(text)
        assert found == [(sig.name, found[0][1])], text[-3000:]
        step = int(found[0][1])
        assert 0 < step < 32  # no checkpoint was due at that step (the epoch ends at 32)
        assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == step
        assert _logged_steps(out)[-1] == step  # nothing past the checkpoint
        assert "Traceback" not in text
        stops.append(step)
    assert stops[1] > stops[0]
    text = _run(_pretrain_cmd(out, epochs=1), tmp_path / "finish.log")
    assert f"resuming from {out / 'checkpoints' / 'last.pt'} at step {stops[1]}" in text
    _assert_same_weights(out, ref)
    assert _logged_steps(out) == list(range(1, 33))  # each step logged once

    before = _snapshot(out)
    text = _run(_pretrain_cmd(out, epochs=1), tmp_path / "again.log")
    assert "already finished (32 steps)" in text
    assert _snapshot(out) == before  # changed nothing


# --------------------------------------------------------------------------- torchrun
@pytest.fixture(scope="module")
def reference_2proc(tmp_path_factory) -> Path:
    """An uninterrupted 2-process run (32 steps, one epoch)."""
    tmp = tmp_path_factory.mktemp("ref2")
    _run(_torchrun_cmd(tmp / "run", epochs=1), tmp / "ref.log")
    return tmp / "run"


def test_sigterm_to_torchrun_stops_both_ranks_at_one_step(tmp_path, reference_2proc):
    out = tmp_path / "run"
    with Launch(_torchrun_cmd(out, epochs=1), tmp_path / "stop.log") as run:
        _wait_for_step(out, 3, run)
        run.proc.send_signal(signal.SIGTERM)  # the agent passes it to both workers
        run.wait(120)
        text = run.output
    found = STOP_LINE.findall(text)
    assert len(found) == 1 and found[0][0] == "SIGTERM", text[-3000:]  # rank 0's line
    step = int(found[0][1])
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == step and len(ckpt["rng"]) == 2  # one step, both ranks saved
    assert _logged_steps(out)[-1] == step
    assert not re.search(r'File ".*sslkit', text)  # no traceback from the workers
    _run(_torchrun_cmd(out, epochs=1), tmp_path / "rerun.log")
    _assert_same_weights(out, reference_2proc)


def test_torchrun_restart_after_kill_9_resumes_to_equal_weights(tmp_path, reference_2proc):
    out = tmp_path / "run"
    extra = ["train.checkpoint_every_steps=4"]
    with Launch(_torchrun_cmd(out, epochs=1, extra=extra, restarts=2),
                tmp_path / "elastic.log") as run:
        _wait_for_step(out, 6, run)
        os.kill(_worker_pids(run.proc.pid)[1], signal.SIGKILL)
        assert run.wait(300) == 0, run.output[-4000:]
        text = run.output
    assert "torchrun restart 1" in text and "resuming from" in text, text[-4000:]
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == 32
    _assert_same_weights(out, reference_2proc)
    assert _logged_steps(out) == list(range(1, 33))


@pytest.mark.slow
def test_a_frozen_rank_ends_the_job_with_the_timeout_line(tmp_path):
    """SIGSTOP of rank 1: rank 0 waits run.dist_timeout_s=30 s in a collective, then ends
    with one line; torchrun then kills the stopped rank after its 30 s grace."""
    out = tmp_path / "run"
    with Launch(_torchrun_cmd(out, epochs=1, extra=["run.dist_timeout_s=30"]),
                tmp_path / "frozen.log") as run:
        _wait_for_step(out, 3, run)
        t0 = time.time()
        os.kill(_worker_pids(run.proc.pid)[1], signal.SIGSTOP)
        code = run.wait(180)
        elapsed = time.time() - t0
        text = run.output
    assert code != 0
    assert elapsed < 120, elapsed
    lines = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    assert lines == [lines[0]] and lines[0].startswith(
        "error: a process did not answer within run.dist_timeout_s=30 s"), text[-3000:]
    assert not re.search(r'File ".*sslkit', text)  # one line, no traceback of ours


def test_a_data_error_in_rank_0s_online_knn_ends_both_ranks_with_its_line(tmp_path):
    """The online kNN runs on rank 0 alone while rank 1 waits (``together``): an image of
    the test split that cannot be decoded ends both ranks with the same one line, not rank 1
    with 'another process of the run ended'."""
    from PIL import Image

    data = tmp_path / "imgs"
    for split, n in (("train", 16), ("val", 2)):
        for c, cls in enumerate(("a", "b")):
            (data / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 20), (40 + 100 * c, 8 * i, 90)).save(
                    data / split / cls / f"{i}.png")
    (data / "val" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    items = tiny_overrides(tmp_path / "run", epochs=1, extra=[
        "data.name=imagefolder", f"data.root={data}", "eval.knn_every=1",
        "run.tensorboard=false", "run.num_threads=1", "run.aug_grid_every=0",
        "run.dist_timeout_s=120"])
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "run_pretrain.py"),
           *[a for it in items for a in ("--set", it)]]
    with Launch(cmd, tmp_path / "knn.log") as run:  # every process ended at exit
        code = run.wait(300)
        text = run.output
    assert code != 0
    lines = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 2 and lines[0] == lines[1], text[-4000:]  # one line per rank, equal
    assert "broken.png" in lines[0] and "data.skip_corrupt" in lines[0]
    assert _logged_steps(tmp_path / "run") == [1, 2]  # 32 images, 16 per step: the epoch ran
    assert "another process" not in text and not re.search(r'File ".*sslkit', text)
