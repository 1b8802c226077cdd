"""run_lincls.py under torchrun (2 gloo processes) gives the single-process results; separate
result entries per evaluation kind; re-evaluation replaces its TensorBoard output."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn

from conftest import ROOT
from linear_eval.sharding import batch_shard
from linear_eval.standard import standard_probe
from sslkit import config


def test_batch_shards_deal_whole_batches_round_robin():
    shards = [batch_shard(10, 3, r, 2).tolist() for r in range(2)]
    assert shards == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9]]
    assert batch_shard(2, 3, 1, 2).tolist() == []


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    return subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_torchrun_lincls_equals_one_process(tiny_run, tmp_path):
    """Sharded features, gathered in order, are bit-identical: kNN and the cached probe give
    the single-process numbers exactly; the standard probe runs to the end under DDP."""
    from linear_eval.main import run_lincls

    ckpt = str(tiny_run / "backbone.pt")
    sets = ["eval.mode=cached", "eval.batch_size=20", "run.progress=false"]
    one = run_lincls(checkpoint=ckpt, overrides=sets, output=str(tmp_path / "one"))
    proc = _torchrun(str(ROOT / "run_lincls.py"), "--checkpoint", ckpt, "--output",
                     str(tmp_path / "two"), "--set", *sets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    two = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["knn"] == one["knn"]
    for key in ("linear_top1", "linear_top5", "knn_top1", "knn_top5"):
        assert two[key] == one[key], key
    assert two["probe"]["table"] == one["probe"]["table"]
    proc = _torchrun(str(ROOT / "run_lincls.py"), "--checkpoint", ckpt, "--output",
                     str(tmp_path / "std"), "--set", "eval.mode=standard", "eval.epochs=2",
                     "eval.batch_size=20", "run.progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    std = json.loads((tmp_path / "std" / "eval.json").read_text())
    assert std["processes"] == 2 and len(std["probe"]["history"]) == 2
    assert 0 <= std["linear_top1"] <= 100


# --------------------------------------------------------------------------- DDP probe math
def _probe_data():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(50, 1, 4, 4, generator=g) * 255).to(torch.uint8)
    y = torch.randint(0, 3, (50,), generator=g)
    return x, y


def _standard(cfg, shard_test: bool):
    from sslkit import distributed as dist

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 6))
    for p in backbone.parameters():
        p.requires_grad_(False)
    x, y = _probe_data()
    test = (x, y)
    if shard_test and dist.get_world_size() > 1:
        idx = batch_shard(len(x), cfg.batch_size, dist.get_rank(), dist.get_world_size())
        test = (x[idx], y[idx])
    to_float = _ToFloat()
    return standard_probe(backbone, 6, 3, (x, y), test, cfg, train_transform=to_float,
                          test_transform=to_float, device=torch.device("cpu"), seed=0)


class _ToFloat(nn.Module):
    """A deterministic transform (the probe's random crops differ by process by design)."""

    def forward(self, x):
        return x.float() / 255


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world)
    torch.set_num_threads(1)
    cfg = config.build({}, ["eval.epochs=3", "eval.batch_size=16", "eval.lr=0.5"]).eval
    result = _standard(cfg, shard_test=True)
    torch.save({"top1": result["linear_top1"], "history": result["history"]},
               os.path.join(out, f"rank{rank}.pt"))
    tdist.barrier()
    tdist.destroy_process_group()


def test_ddp_standard_probe_equals_one_process(tmp_path):
    """Two processes, each with half of every global batch (the last one uneven: 50 = 3 x 16 +
    2), train the same probe as one process on whole batches."""
    import torch.multiprocessing as mp

    cfg = config.build({}, ["eval.epochs=3", "eval.batch_size=16", "eval.lr=0.5"]).eval
    one = _standard(cfg, shard_test=False)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r in ranks:
        assert r["top1"] == one["linear_top1"]
        for a, b in zip(r["history"], one["history"]):
            assert a["train_top1"] == pytest.approx(b["train_top1"])
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


# --------------------------------------------------------------------------- outputs
def test_results_are_kept_per_evaluation_and_tensorboard_is_replaced(tiny_run):
    from linear_eval.main import run_lincls

    ckpt = str(tiny_run / "backbone.pt")
    run_lincls(checkpoint=ckpt, overrides=["eval.mode=cached"])
    run_lincls(checkpoint=ckpt, overrides=["eval.mode=standard", "eval.epochs=1"])
    run_lincls(checkpoint=ckpt, overrides=["eval.mode=cached", "data.mean=[0]", "data.std=[1]"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re-evaluating warns about nothing
        d = run_lincls(checkpoint=ckpt, overrides=["eval.mode=cached"])
    assert set(d["results"]) == {"cached", "standard eval.epochs=1",
                                 "cached data.mean=[0] data.std=[1]"}
    assert d["results"]["cached"]["linear_top1"] == d["linear_top1"]
    assert d["results"]["standard eval.epochs=1"]["mode"] == "standard"
    lincls = tiny_run / "tb" / "lincls"
    assert len(list(lincls.glob("events.out.tfevents.*"))) == 1  # the last evaluation only
    assert len(list((tiny_run / "tb").glob("*.sslkit-eval"))) == 1


def test_long_tailed_eval_reports_per_class_and_shot_groups(tmp_path):
    """A long-tailed probe split: eval.json carries per-class accuracy (which averages back to
    the headline numbers on the balanced test set) and many / medium / few groups."""
    import math

    from helpers_tiny import make_tiny_run
    from linear_eval.main import run_lincls

    run = make_tiny_run(tmp_path / "run")
    d = run_lincls(checkpoint=str(run / "backbone.pt"),
                   overrides=["eval.mode=cached", "data.long_tail=8", "eval.shot_groups=[20,8]"])
    pc = d["per_class"]
    assert pc["train_counts"] == [24, 12, 6, 3]  # 24 x 8^(-i/3) of the 96 synthetic images
    assert len(pc["knn"]) == len(pc["linear"]) == 4 and pc["classes"][0] == "class 0"
    # the test set is balanced (12 per class): the per-class mean is the overall top-1
    assert sum(pc["knn"]) / 4 == pytest.approx(d["knn_top1"])
    assert sum(pc["linear"]) / 4 == pytest.approx(d["linear_top1"])
    assert d["many"]["classes"] == ["class 0"] and d["few"]["classes"] == ["class 2", "class 3"]
    assert d["few"]["linear"] == pytest.approx((pc["linear"][2] + pc["linear"][3]) / 2)
    assert d["medium"]["classes"] == ["class 1"] and not math.isnan(d["medium"]["knn"])
    assert d["results"]["cached data.long_tail=8 eval.shot_groups=[20,8]"]["few"]
