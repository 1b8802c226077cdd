"""Shared test helpers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_cli(script: str, *args: str, cwd: Path | None = None, timeout: float = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python <script> args`` (``script="-m"``: ``python -m args``) from the repo root
    (or ``cwd``) and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    target = ["-m"] if script == "-m" else [str(ROOT / script)]
    return subprocess.run([sys.executable, *target, *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, stderr is exactly one ``error: ...`` line, no traceback, fragments present."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for frag in fragments:
        assert frag.lower() in lines[0].lower(), (frag, lines[0])


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is as fast and immune to a busy shared CPU (modules opt in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A small run directory (random weights): checkpoints/last.pt, backbone.pt, config.yaml."""
    from helpers_tiny import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("lincls") / "run")
