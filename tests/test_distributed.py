"""Distributed pretraining on the CPU (gloo): torchrun end to end, DDP equivalences."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import ROOT
from helpers_tiny import tiny_overrides
from sslkit import config
from sslkit.io.checkpoint import load_checkpoint
from sslkit.losses import moco_v3_loss
from sslkit.methods import MoCoV2, MoCoV3
from sslkit.methods.resolve import resolved

N = 6  # images per rank


def _bn_free(method: nn.Module) -> nn.Module:
    """Replace every BatchNorm by Identity: per-sample computation, batch-split invariant."""
    for name, mod in list(method.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(mod, cname, nn.Identity())
    return method


def _toy(name: str) -> nn.Module:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten())
    cfg = resolved(config.build({}, [f"method.name={name}", "method.proj_hidden_dim=16",
                                     "method.proj_dim=8", "method.pred_hidden_dim=16",
                                     "method.queue_size=24", "method.temperature=0.2",
                                     "train.batch_size=12", "method.bn_splits=1"]))
    cls = MoCoV2 if name == "mocov2" else MoCoV3
    return _bn_free(cls(backbone, 8, cfg.method, cfg.batchformer))


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(2 * N, 3, 8, 8, generator=g), torch.randn(2 * N, 3, 8, 8, generator=g)


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world)
    torch.set_num_threads(1)
    local = slice(rank * N, (rank + 1) * N)
    result = {}
    for name in ("mocov2", "mocov3"):
        method = _toy(name)
        ddp = nn.parallel.DistributedDataParallel(method)
        opt = torch.optim.SGD(method.parameters(), lr=0.1)
        grads = None
        for step in range(3):
            v1, v2 = _data(step)
            loss, _ = ddp(v1[local], v2[local])
            opt.zero_grad()
            loss.backward()
            if step == 0:
                grads = {k: p.grad.clone() for k, p in method.named_parameters()
                         if p.grad is not None}
            opt.step()
            method.momentum_update(0.9)
        result[name] = {"grads": grads, "state": method.state_dict()}
    # the loss over keys gathered with all_gather equals the single-process loss
    g = torch.Generator().manual_seed(7)
    q, k = torch.randn(2 * N, 8, generator=g), torch.randn(2 * N, 8, generator=g)
    from sslkit.distributed import all_gather
    result["v3_loss"] = moco_v3_loss(q[local], all_gather(k[local].contiguous()), 0.2,
                                     rank=rank, world_size=world)
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    # Leave together: a rank that tears gloo down while its peer is still in a collective
    # makes the peer abort ("terminate called without an active exception").
    tdist.barrier()
    tdist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(tmp / "init"), str(tmp)), nprocs=2)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("name", ["mocov2", "mocov3"])
def test_ddp_step_equals_single_process_on_the_full_batch(ranks, name):
    method = _toy(name)
    v1, v2 = _data(0)
    loss, _ = method(v1, v2)
    loss.backward()
    for key, p in method.named_parameters():
        if p.grad is None:
            continue
        for r in ranks:
            torch.testing.assert_close(r[name]["grads"][key], p.grad, rtol=1e-4, atol=1e-6)


def test_queues_and_weights_identical_on_both_ranks(ranks):
    for name in ("mocov2", "mocov3"):
        a, b = ranks[0][name]["state"], ranks[1][name]["state"]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    # the queue holds the keys of both ranks: 3 steps x 12 keys = 36 > K = 24, pointer wrapped
    assert int(ranks[0]["mocov2"]["state"]["queue_ptr"]) == 36 % 24


def test_moco_v3_loss_over_gathered_keys_equals_single_process(ranks):
    g = torch.Generator().manual_seed(7)
    q, k = torch.randn(2 * N, 8, generator=g), torch.randn(2 * N, 8, generator=g)
    full = moco_v3_loss(q, k, 0.2)
    torch.testing.assert_close((ranks[0]["v3_loss"] + ranks[1]["v3_loss"]) / 2, full)


def _torchrun(tmp_path, method: str) -> tuple[subprocess.CompletedProcess, object]:
    out = tmp_path / method
    items = tiny_overrides(out, method=method, bf=True, epochs=1,
                           extra=["run.num_threads=1", "eval.knn_every=0",
                                  "train.batch_size=16"])
    sets = [a for it in items for a in ("--set", it)]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2",
                           str(ROOT / "run_pretrain.py"), *sets],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc, out


@pytest.mark.parametrize("method", ["mocov2", "mocov3"])
def test_torchrun_two_processes_with_batchformer(tmp_path, method):
    proc, out = _torchrun(tmp_path, method)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines if "loss" in r]
    assert steps == [1, 2, 3, 4]  # 64 images / global batch 16: written once per step
    assert all("loss_bf" in r for r in lines if "loss" in r)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["last.pt"]  # rank 0 alone wrote the one checkpoint
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4 and len(ckpt["rng"]) == 2  # both ranks' RNG, for resume
    assert (out / "backbone.pt").exists()
    assert proc.stdout.count("done:") == 1  # one summary, from rank 0


def test_torchrun_resume(tmp_path):
    proc, out = _torchrun(tmp_path, "mocov2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    items = tiny_overrides(out, method="mocov2", bf=True, epochs=2,
                           extra=["run.num_threads=1", "eval.knn_every=0",
                                  "train.batch_size=16"])
    sets = [a for it in items for a in ("--set", it)]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2",
                           str(ROOT / "run_pretrain.py"), "--resume", *sets],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resuming from" in proc.stdout and "train.epochs: 1 -> 2" in proc.stdout
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 8
