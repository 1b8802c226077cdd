"""Every bad input of docs/errors.md: one `error:` line, exit 2, no traceback, nothing changed.

The cases live in tests/error_cases.py (the same table generates docs/errors.md).
"""
from __future__ import annotations

import contextlib
import hashlib
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from error_cases import CASES, Case
from sslkit.cli import finetune_main, lincls_main, pretrain_main
from sslkit.data.shards import main as shards_main
from sslkit.export import main as export_main


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes (and every directory)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


MAINS = {"pretrain": pretrain_main, "lincls": lincls_main, "finetune": finetune_main,
         "export": export_main, "shards": shards_main}


@contextlib.contextmanager
def hidden(modules: tuple[str, ...]):
    """``import m`` raises ImportError for each m (as if not installed) inside the block."""
    saved = {m: sys.modules.get(m) for m in modules}
    sys.modules.update({m: None for m in modules})
    try:
        yield
    finally:
        for m, mod in saved.items():
            if mod is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = mod


def run_case(case: Case, tmp: Path, capsys) -> tuple[int, str]:
    argv = case.build(tmp)
    before = snapshot(tmp)
    with hidden(case.hide_modules):
        code = MAINS[case.script](argv)
    err = capsys.readouterr().err
    after = snapshot(tmp)
    if case.lazy:  # ignore what the newly started run directory holds; the rest must stay
        after = {k: v for k, v in after.items() if k in before or not k.startswith("run")}
    assert after == before, f"{case.id}: files on disk changed"
    return code, err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_error(case, tmp_path, capsys):
    if case.needs_no_gpu and torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    code, err = run_case(case, tmp_path, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert code == 2, (case.id, code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (case.id, err[-2000:])
    assert "Traceback" not in err
    for frag in case.fragments:
        assert frag in lines[0], (case.id, frag, lines[0])
    assert not (tmp_path / "PWNED").exists()  # a pickle payload never ran


def test_docs_table_lists_every_case():
    doc = (ROOT / "docs" / "errors.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, f"docs/errors.md is missing {missing}; run scripts/errors_table.py"
    assert len(CASES) >= 30


def test_process_level_one_line_error(tmp_path):
    """The real entry point (a fresh interpreter) prints one line and exits 2."""
    from conftest import assert_one_line_error, run_cli

    proc = run_cli("run_pretrain.py", "--set", "train.batch_size=0",
                   "--set", f"run.output_dir={tmp_path / 'r'}")
    assert_one_line_error(proc, "train.batch_size=0")
    assert not (tmp_path / "r").exists()
