"""The README's commands work as written. A newcomer follows "Try it on your own images" on a
folder of 20 photos: every command there runs, with no error and no warning (slow: the whole
walk, verbatim). The default suite runs what is cheap: the preview as written, and every
``run_pretrain.py`` line of the README with ``--print-config`` (every key and value checked,
nothing trained)."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()
VENV_PY = ".venv/bin/python"


def bash_lines(text: str) -> list[str]:
    """The command lines of the README's ```bash blocks (comments dropped)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for ln in block.splitlines():
            ln = ln.split(" #", 1)[0].strip()
            if ln and not ln.startswith("#"):
                lines.append(ln)
    return lines


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def photo_folder(root: Path) -> Path:
    """20 photos in class folders: 2 x 8 to train on, 2 x 2 to evaluate."""
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for c in ("cats", "dogs"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                w, h = (320, 240) if i % 2 else (240, 320)
                small = (g.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
                Image.fromarray(small).resize((w, h), Image.BICUBIC).save(d / f"{i}.jpg")
    return root


def run_as_written(line: str, cwd: Path, path: Path, extra: tuple[str, ...] = (),
                   timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a README line in ``cwd`` (which sees the repository's configs and scripts), with
    ``PATH`` the photo folder and ``.venv/bin/python`` this interpreter."""
    argv = shlex.split(line.replace("data.root=PATH", f"data.root={path}"))
    assert argv[0] == VENV_PY, line
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *argv[1:], *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name in ("configs", "run_pretrain.py", "run_lincls.py"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def test_the_own_images_section_has_the_commands_a_newcomer_needs():
    lines = bash_lines(section("Try it on your own images"))
    kinds = [ln.split()[1:3] for ln in lines]
    assert ["-m", "sslkit.preview"] in kinds
    pretrain = [ln for ln in lines if "run_pretrain.py" in ln]
    assert len(pretrain) == 2  # the quick try and the full budget
    quick = pretrain[0]
    for key in ("train.max_steps=", "train.batch_size=", "method.queue_size=", "data.root=PATH"):
        assert key in quick
    assert any("run_lincls.py" in ln for ln in lines)


def test_every_readme_pretraining_line_is_a_valid_config(workdir):
    """Each run_pretrain.py line of the README, with --print-config: its config and overrides
    are accepted and resolve (a renamed key would fail here)."""
    lines = [ln for ln in bash_lines(README) if ln.startswith(f"{VENV_PY} run_pretrain.py")]
    assert lines
    path = photo_folder(workdir / "photos")
    for line in lines:
        proc = run_as_written(line, workdir, path, extra=("--print-config",), timeout=300)
        assert proc.returncode == 0, (line, proc.stderr[-2000:])
        assert "data:" in proc.stdout and not list(workdir.glob("runs/*")), line


def test_the_preview_as_written(workdir):
    line = next(ln for ln in bash_lines(section("Try it on your own images"))
                if "sslkit.preview" in ln)
    path = photo_folder(workdir / "photos")
    proc = run_as_written(line, workdir, path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (workdir / "grid.png").stat().st_size > 0
    assert "warning" not in (proc.stdout + proc.stderr).lower(), proc.stderr


@pytest.mark.slow
def test_a_newcomer_walk_on_twenty_photos(workdir):
    """Preview, the quick try, the evaluation: as written, on 20 photos, no error, no
    warning; eval.json holds the numbers."""
    path = photo_folder(workdir / "photos")
    lines = bash_lines(section("Try it on your own images"))
    steps = [ln for ln in lines if "run_mine_full" not in ln and "mine_full" not in ln]
    assert len(steps) == 3
    for line in steps:
        proc = run_as_written(line, workdir, path, timeout=900)
        assert proc.returncode == 0, (line, proc.stderr[-3000:])
        assert "warning" not in (proc.stdout + proc.stderr).lower(), (line, proc.stderr[-3000:])
    result = json.loads((workdir / "runs" / "mine" / "eval.json").read_text())
    assert 0 <= result["knn_top1"] <= 100 and 0 <= result["linear_top1"] <= 100
