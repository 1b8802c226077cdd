"""Command lines: --help, one-line errors (exit 2, no traceback), nothing written on error."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, assert_one_line_error, run_cli


@pytest.mark.parametrize("script, flags", [
    ("run_pretrain.py", ["--config", "--set", "--resume", "--overwrite"]),
    ("run_lincls.py", ["--checkpoint", "--config", "--set", "--baseline"]),
])
def test_help(script, flags):
    proc = run_cli(script, "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in flags:
        assert flag in proc.stdout
    # each command's --set example names keys that command reads
    example = proc.stdout.split("e.g.", 1)[1].split("(repeatable)")[0]
    if script == "run_lincls.py":
        assert "eval." in example and "train." not in example
    else:
        assert "train." in example


def test_import_torch_and_stdlib_ssl_from_repo_root():
    # A package named `ssl` in the repo root would shadow the standard library here.
    proc = subprocess.run([sys.executable, "-c", "import torch, sslkit, ssl; ssl.SSLContext"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_bad_config_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"run:\n  output_dir: {out}\ntrain:\n  batch_size: 0\n")
    proc = run_cli("run_pretrain.py", "--config", str(bad))
    assert_one_line_error(proc, "train.batch_size=0", ">= 1")
    assert not out.exists()


@pytest.mark.parametrize("args, fragments", [
    (["--set", "train.epochs"], ["malformed --set", "key=value"]),
    (["--set", "train.epocs=3"], ["unknown config key 'train.epocs'", "train.epochs"]),
    (["--config", "does/not/exist.yaml"], ["does not exist"]),
    (["--bogus"], ["unrecognized arguments: --bogus"]),
])
def test_pretrain_usage_errors(tmp_path, args, fragments):
    proc = run_cli("run_pretrain.py", *args, "--set", f"run.output_dir={tmp_path}/r")
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "r").exists()


def test_set_accepts_several_pairs_and_repeats(tmp_path):
    from sslkit import config
    from sslkit.cli import _overrides, pretrain_parser
    args = pretrain_parser().parse_args(
        ["--set", "train.epochs=2", "optim.lr=0.1", "--set", "run.seed=3"])
    cfg = config.build({}, _overrides(args))
    assert (cfg.train.epochs, cfg.optim.lr, cfg.run.seed) == (2, 0.1, 3)


def test_lincls_needs_a_checkpoint():
    proc = run_cli("run_lincls.py")
    assert_one_line_error(proc, "--checkpoint")
