"""The user's path: resume with the run's own config, a finished run, Ctrl-C, log lines in a
file, the short header and --print-config, the console scripts' names."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, assert_one_line_error, run_cli
from helpers_tiny import tiny_config, tiny_overrides
from sslkit.train.engine import pretrain


def _sets(items):
    return [a for it in items for a in ("--set", it)]


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _steps(out: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(ln)]


EXTRA = ["eval.knn_every=0", "train.checkpoint_every_steps=2", "run.tensorboard=false"]


def test_resume_continues_the_run_on_disk(tmp_path):
    """`--resume --set run.output_dir=RUN` reads RUN/config.yaml, not configs/demo.yaml: the
    run ends at its own 8 steps (demo.yaml would mean Fashion-MNIST, 1404 steps)."""
    out = tmp_path / "run"
    pretrain(tiny_config(out, epochs=2, extra=EXTRA), stop_after_steps=3)
    assert _steps(out) == [1, 2, 3]
    proc = run_cli("run_pretrain.py", "--resume", "--set", f"run.output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"config: {out / 'config.yaml'}" in proc.stdout and "resuming" in proc.stdout
    assert _steps(out) == list(range(1, 9))
    # the positional form, on the finished run: nothing to do, nothing changed
    before = _files(out)
    proc = run_cli("run_pretrain.py", "--resume", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already finished (8 steps)" in proc.stdout
    assert _files(out) == before


def test_resume_may_change_only_non_structural_keys(tmp_path):
    out = tmp_path / "run"
    pretrain(tiny_config(out, epochs=2, extra=EXTRA), stop_after_steps=2)
    proc = run_cli("run_pretrain.py", "--resume", str(out), "--set", "model.width=8")
    assert_one_line_error(proc, "model.width", "run's own config.yaml")
    proc = run_cli("run_pretrain.py", "--resume", str(tmp_path / "nothing"))
    assert_one_line_error(proc, "nothing to resume")


def test_resume_notes_only_keys_the_user_changed(tmp_path):
    """A run started with --overwrite resumes without a note about run.overwrite (a
    permission, not part of the run), and a real change is named."""
    out = tmp_path / "run"
    pretrain(tiny_config(out, epochs=2, extra=EXTRA + ["run.overwrite=true"]), overwrite=True,
             stop_after_steps=2)
    proc = run_cli("run_pretrain.py", "--resume", str(out), "--set", "run.log_every_steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [ln for ln in proc.stdout.splitlines() if ln.startswith("note: resuming")]
    assert notes == ["note: resuming with changed keys: run.log_every_steps: 1 -> 3"], notes


def test_ctrl_c_prints_the_resume_command_and_log_lines_without_carriage_returns(tmp_path):
    out = tmp_path / "run"
    items = tiny_overrides(out, epochs=100000, extra=["eval.knn_every=0", "run.log_every_steps=2",
                                                   "run.progress=true", "run.tensorboard=false",
                                                   "train.checkpoint_every_steps=2"])
    # Ctrl-C as a terminal sends it: SIGINT at its default in the child, also where this
    # suite was started in the background (`cmd &` in a script starts with SIGINT ignored,
    # and Python then keeps ignoring it)
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_pretrain.py"), *_sets(items)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "checkpoints" / "last.pt").exists():
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-2000:]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"--resume {out}" in errors[0] and "run_pretrain.py" in errors[0]
    assert "\r" not in stdout  # a pipe is not a terminal: plain lines, no bar
    lines = [ln for ln in stdout.splitlines() if ln.startswith("step ")]
    assert lines and all("loss" in ln and "img/s" in ln and "ETA" in ln for ln in lines)
    assert lines[0].startswith("step 2/")


def test_header_is_short_and_print_config_resolves_every_default(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("run_pretrain.py", "--print-config", *_sets(tiny_overrides(out)))
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["data"]["mean"] and printed["augment"]["crop_scale"]
    assert printed["method"]["proj_hidden_dim"] == 32 and not out.exists()
    proc = run_cli("run_pretrain.py", "--overwrite",
                   *_sets(tiny_overrides(out, epochs=1, extra=["eval.knn_every=0"])))
    assert proc.returncode == 0, proc.stderr[-2000:]
    head = proc.stdout.splitlines()[:2]
    assert head[0].startswith("config: ") and "configs/demo.yaml" in head[0]
    # --overwrite into a directory with no run in it (make demo on a fresh clone): a new run
    assert head[1].startswith(f"run directory: {out} (new run)") and "replacing" not in head[1]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["run"]["overwrite"] is False  # a permission, never saved
    assert saved["data"]["std"] and saved["augment"]["flip_p"] == 0.0
    proc = run_cli("run_pretrain.py", "--overwrite", *_sets(tiny_overrides(
        out, epochs=1, extra=["eval.knn_every=0", "train.max_steps=1"])))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "new run, replacing the one there" in proc.stdout.splitlines()[1]


@pytest.mark.parametrize("name, flag", [("sslkit-pretrain", "--resume"),
                                        ("sslkit-lincls", "--checkpoint")])
def test_console_scripts_name_themselves(name, flag):
    script = Path(sys.executable).parent / name
    if not script.exists():
        pytest.skip("the package is not installed with its console scripts")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: {name}") and flag in proc.stdout


def test_load_backbone_of_any_width(tmp_path):
    """sslkit.export.load_backbone rebuilds a width-4 ResNet from the run's config.yaml, loads
    backbone.pt strictly and returns the normalisation: the trained backbone's outputs."""
    import torch

    from sslkit.train.engine import Trainer
    from sslkit.export import load_backbone

    out = tmp_path / "run"
    trainer = Trainer(tiny_config(out, epochs=1, extra=["eval.knn_every=0"]))
    trainer.fit()
    net, mean, std = load_backbone(out)
    assert len(mean) == len(std) == 3 and not net.training
    x = torch.randn(4, 3, 16, 16)
    trained = trainer.method.backbone.eval()
    assert torch.equal(net(x), trained(x))
    assert torch.equal(load_backbone(out / "checkpoints" / "last.pt")[0](x), trained(x))


def _hparams_session(tb_dir: Path):
    """(hparam values, metric tags) of the HParams session a run registered."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    values, metrics = {}, []
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(
                    v.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    values = {k: x.WhichOneof("kind") and getattr(x, x.WhichOneof("kind"))
                              for k, x in data.session_start_info.hparams.items()}
                if data.HasField("experiment"):
                    metrics = [m.name.tag for m in data.experiment.metric_infos]
    return values, metrics


def test_hparams_columns_are_the_ones_the_run_fills(tmp_path):
    """No empty online-kNN column without an online kNN, and BatchFormer reads as a word."""
    out = tmp_path / "run"
    pretrain(tiny_config(out, epochs=1, bf=True, extra=["eval.knn_every=0"]))
    values, metrics = _hparams_session(out / "tb")
    assert values["batchformer"] == "v1" and values["method"] == "mocov2"
    assert "1_train/loss" in metrics and "3_eval/linear_top1" in metrics
    assert not [m for m in metrics if m.startswith("2_online/")]
