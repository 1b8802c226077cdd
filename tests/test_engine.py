"""Training engine end to end: run directory contract, resume, export, NaN stop, no clobber."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision

from conftest import assert_one_line_error, run_cli
from helpers_tiny import tiny_config, tiny_overrides
from sslkit import config
from sslkit.io.checkpoint import load_checkpoint, load_state_dict_file
from sslkit.train.engine import Trainer, TrainingDiverged, pretrain
from sslkit.errors import ConfigError, UserError
from sslkit.methods.resolve import resolved


def _sets(items: list[str]) -> list[str]:
    out = []
    for it in items:
        out += ["--set", it]
    return out


@pytest.mark.parametrize("method, bf", [("mocov2", False), ("mocov2", True),
                                        ("mocov3", False), ("mocov3", True)])
def test_run_pretrain_end_to_end(tmp_path, method, bf):
    out = tmp_path / "run"
    proc = run_cli("run_pretrain.py", *_sets(tiny_overrides(out, method=method, bf=bf)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run directory" in proc.stdout  # the final summary names the paths
    # the run-directory contract
    cfg = config.load(out / "config.yaml")
    assert cfg == resolved(tiny_config(out, method=method, bf=bf))  # every default written out
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "loss" in r]
    knn = [r for r in lines if "knn_top1" in r]
    assert [r["step"] for r in train] == list(range(1, 9))  # 64 / 16 = 4 steps x 2 epochs
    for r in train:
        assert {"step", "epoch", "loss", "lr", "img_per_s", "pos_sim", "neg_sim"} <= set(r)
        assert math.isfinite(r["loss"])
        if bf:
            assert math.isfinite(r["loss_plain"]) and math.isfinite(r["loss_bf"])
    assert len(knn) == 2 and all(0 <= r["knn_top1"] <= 100 for r in knn)
    assert list((out / "tb").glob("events.out.tfevents.*"))
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "epoch", "step", "config"} <= set(ckpt)
    assert ckpt["step"] == 8 and ckpt["epoch"] == 2
    assert any("momentum" in k for k in ckpt["model"])
    assert any("batchformer" in k for k in ckpt["model"]) == bf
    state = load_state_dict_file(out / "backbone.pt")
    assert not any(k.startswith(("batchformer", "momentum", "projector", "predictor"))
                   for k in state)


def test_resume_gives_identical_weights(tmp_path):
    extra = ["train.checkpoint_every_steps=3", "batchformer.dropout=0.5"]
    full = tiny_config(tmp_path / "full", bf=True, epochs=3, extra=extra)
    pretrain(full)
    part = tiny_config(tmp_path / "part", bf=True, epochs=3, extra=extra)
    pretrain(part, stop_after_steps=7)  # checkpoints at 3, 4 (epoch end) and 6
    assert load_checkpoint(tmp_path / "part/checkpoints/last.pt")["step"] == 6
    pretrain(part, resume=True)  # continues mid-epoch from step 6
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "part/checkpoints/last.pt")
    assert a["step"] == b["step"] == 12
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    # the metrics file holds each step once
    steps = [json.loads(ln)["step"] for ln in
             (tmp_path / "part/metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(ln)]
    assert steps == list(range(1, 13))


def test_export_matches_trained_backbone_and_loads_into_torchvision(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(out, bf=True, epochs=1, extra=["model.width=64", "eval.knn_every=0",
                                                     "data.synthetic_train=32"])
    trainer = Trainer(cfg)
    trainer.fit()
    state = load_state_dict_file(out / "backbone.pt")
    # a torchvision ResNet-18 with the same (CIFAR) stem loads it strictly, minus fc
    tv = torchvision.models.resnet18()
    tv.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    tv.maxpool = torch.nn.Identity()
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(state, strict=True)
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(tv.eval()(x), trainer.method.backbone.eval()(x))
    # python -m sslkit.export writes the same weights
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "sslkit.export",
                           str(out / "checkpoints/last.pt"), str(tmp_path / "exp.pt")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    exp = load_state_dict_file(tmp_path / "exp.pt")
    assert exp.keys() == state.keys() and all(torch.equal(exp[k], state[k]) for k in state)


def inject_fault(trainer: Trainer, call: int, value: float) -> None:
    """Make the loss of the ``call``-th forward pass non-finite (multiplied by ``value``)."""
    real, calls = trainer.stepper.model, {"n": 0}

    def faulty(v1, v2):
        calls["n"] += 1
        loss, stats = real(v1, v2)
        return (loss * value if calls["n"] == call else loss), stats

    trainer.stepper.model = faulty


def test_nan_loss_stops_and_keeps_last_finite_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "run", epochs=3, extra=["eval.knn_every=0"])
    trainer = Trainer(cfg)
    inject_fault(trainer, call=6, value=float("nan"))
    with pytest.raises(TrainingDiverged, match="at step 6 "):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert ckpt["step"] == 4  # the epoch-1 checkpoint, untouched
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_nan_skip_policy_counts(tmp_path):
    cfg = tiny_config(tmp_path / "run", epochs=1, extra=["eval.knn_every=0",
                                                         "train.nan_policy=skip"])
    trainer = Trainer(cfg)
    inject_fault(trainer, call=2, value=float("inf"))
    summary = trainer.fit()
    assert summary.skipped_steps == 1 and summary.steps == 4


def test_refuses_to_clobber_another_run(tmp_path):
    out = tmp_path / "run"
    items = tiny_overrides(out, epochs=1, extra=["eval.knn_every=0"])
    assert run_cli("run_pretrain.py", *_sets(items)).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = run_cli("run_pretrain.py", *_sets(items + ["optim.lr=0.1"]))
    assert_one_line_error(proc, "already holds a run", "--resume", "--overwrite")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after
    # resume with nothing to resume
    proc = run_cli("run_pretrain.py", "--resume", *_sets(tiny_overrides(tmp_path / "empty")))
    assert_one_line_error(proc, "nothing to resume")
    assert not (tmp_path / "empty").exists()
    # an explicit --overwrite starts afresh
    proc = run_cli("run_pretrain.py", "--overwrite", *_sets(items + ["optim.lr=0.1"]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert config.load(out / "config.yaml").optim.lr == 0.1


def test_resume_refuses_another_data_order(tmp_path):
    """The checkpoint records steps per epoch: resuming on a different training set (which
    would misplace the data order) is one line, before anything is written."""
    out = tmp_path / "run"
    pretrain(tiny_config(out, epochs=2, extra=["eval.knn_every=0"]), stop_after_steps=4)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    cfg = tiny_config(out, epochs=2, extra=["eval.knn_every=0", "data.synthetic_train=48"])
    with pytest.raises(UserError, match="4 steps per epoch and this run has 3"):
        Trainer(cfg, resume=True)
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def inject_inf_view(trainer: Trainer, call: int, record: dict) -> None:
    """At the ``call``-th batch, put an inf into the second view (after recording the
    method's state just before that step)."""
    real, calls = trainer.stepper.to_views, {"n": 0}

    def faulty(images):
        calls["n"] += 1
        v1, v2 = real(images)
        if calls["n"] == call:
            record["before"] = {k: v.clone() for k, v in trainer.method.state_dict().items()}
            v2 = v2.clone()
            v2[0, 0, 0, 0] = float("inf")
        return v1, v2

    trainer.stepper.to_views = faulty


@pytest.mark.parametrize("method", ["mocov2", "mocov3"])
def test_nan_skip_leaves_no_trace(tmp_path, method):
    """A skipped step leaves the queue, its pointer, the BN buffers, the momentum encoder (and
    every weight) exactly as they were; the run then trains on to a finite end."""
    cfg = tiny_config(tmp_path / "run", method=method, epochs=3,
                      extra=["eval.knn_every=0", "train.nan_policy=skip",
                             "train.checkpoint_every_steps=3"])
    trainer, record = Trainer(cfg), {}
    inject_inf_view(trainer, call=3, record=record)
    summary = trainer.fit(stop_after_steps=3)
    assert summary.skipped_steps == 1
    after = trainer.method.state_dict()
    assert after.keys() == record["before"].keys()
    for k, v in record["before"].items():
        assert torch.equal(after[k], v), k
    summary = Trainer(cfg, resume=True).fit()  # the same run, to its end: finite weights
    assert summary.steps == 12 and summary.final_loss is not None
    assert math.isfinite(summary.final_loss)


def test_sync_bn_on_cpu_processes_is_one_line(tmp_path, monkeypatch):
    """SyncBatchNorm has no CPU kernel: a torchrun CPU run with method.sync_bn=true (the
    MoCo-v3 ImageNet recipes) is refused before anything is written."""
    monkeypatch.setattr("sslkit.train.engine.dist_utils.init_distributed",
                        lambda device_type, timeout_s=None: True)
    cfg = tiny_config(tmp_path / "run", method="mocov3", extra=["method.sync_bn=true"])
    with pytest.raises(ConfigError, match="method.sync_bn=true needs CUDA"):
        Trainer(cfg)
    assert not (tmp_path / "run").exists()


def test_train_step_is_the_step_fit_runs(tmp_path):
    """Benchmarks time Trainer.train_step: driven by hand over Trainer.batches() it ends at
    the same weights, buffers and optimizer state as fit() over the same steps."""
    cfg = tiny_config(tmp_path / "a", method="mocov2", bf=True, epochs=2,
                      extra=["eval.knn_every=0", "run.aug_grid_every=0"])
    fitted = Trainer(cfg)
    fitted.fit(stop_after_steps=5)  # crosses an epoch boundary (4 steps per epoch)
    manual = Trainer(tiny_config(tmp_path / "b", method="mocov2", bf=True, epochs=2,
                                 extra=["eval.knn_every=0", "run.aug_grid_every=0"]))
    manual.method.train()
    while manual.step < 5:
        for images, labels in manual.batches():
            manual.train_step(images, labels)
            if manual.step == 5:
                break
    a, b = fitted.method.state_dict(), manual.method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert manual.scheduler.state_dict() == fitted.scheduler.state_dict()
