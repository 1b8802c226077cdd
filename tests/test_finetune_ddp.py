"""run_finetune.py under torchrun (2 gloo processes): DDP training to the end, and a run
stopped after a checkpoint and resumed by the same command ends with the weights of the
uninterrupted run. Every process started here is ended, on failure too."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import torch

from conftest import ROOT

SETS = ["run.log_every_steps=1", "finetune.epochs=2", "finetune.batch_size=8",
        "finetune.lr=0.5", "finetune.label_fraction=0.5", "finetune.mixup=0.4"]

DRIVER = """import sys
from sslkit import distributed as dist
from sslkit.evaluation.finetune import run_finetune
ckpt, whole, cut = sys.argv[1:4]
dist.init_distributed("cpu")  # one process group for both runs (run_finetune leaves it)
run_finetune(ckpt, None, sys.argv[4:], output=whole)
print(run_finetune(ckpt, None, sys.argv[4:], output=cut, stop_after_steps=8))
dist.destroy_distributed()
"""


def _torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """torchrun --nproc_per_node=2 in its own process group, killed whole on a timeout or an
    error of the test."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node=2", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _weights(out) -> dict:
    return torch.load(out / "finetune" / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_torchrun_finetune_and_exact_resume(tiny_run, tmp_path):
    """One launch fine-tunes to the end ("whole") and stops another run after step 8 of 12
    (48 images, global batch 8 of 2 x 4: 6 steps an epoch); a second launch, the plain
    command, resumes it: the weights equal the uninterrupted run's."""
    ckpt = str(tiny_run / "checkpoints" / "last.pt")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    first = _torchrun(str(driver), ckpt, str(tmp_path / "whole"), str(tmp_path / "cut"), *SETS)
    assert first.returncode == 0 and "'stopped_at': 8" in first.stdout, first.stderr[-3000:]
    assert first.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    result = json.loads((tmp_path / "whole" / "finetune.json").read_text())
    assert result["processes"] == 2 and result["train_images"] == 48
    assert len(result["history"]) == 2 and 0 <= result["top1"] <= 100
    resumed = _torchrun(str(ROOT / "run_finetune.py"), "--checkpoint", ckpt, "--output",
                        str(tmp_path / "cut"), "--set", *SETS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "at step 8" in resumed.stdout
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = json.loads((tmp_path / "cut" / "finetune.json").read_text())
    assert again["history"] == result["history"] and again["processes"] == 2
