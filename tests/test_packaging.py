"""pyproject.toml, environment.yml and the Makefile/CI stay consistent."""
from __future__ import annotations

import ast
import importlib
import re
import sys

import pytest
import yaml

from conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# pip name -> conda name, where they differ (faiss-cpu on pip <-> faiss-gpu for conda users)
CONDA_NAME = {"torch": "pytorch", "faiss-cpu": "faiss-gpu"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_runtime_dependencies():
    deps = {_name(d) for d in _pyproject()["project"]["dependencies"]}
    assert deps == {"torch", "torchvision", "kornia", "faiss-cpu", "tensorboard", "pyyaml",
                    "tqdm"}
    assert _pyproject()["project"]["requires-python"] == ">=3.10"
    extras = _pyproject()["project"]["optional-dependencies"]
    assert any("faiss-gpu" in d for d in extras["gpu"])
    assert "pytest" in {_name(d) for d in extras["dev"]}


def test_environment_yml_covers_every_runtime_dependency():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = set(), []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep.get("pip", [])
        else:
            conda.add(_name(dep))
    for dep in _pyproject()["project"]["dependencies"]:
        name = _name(dep)
        assert CONDA_NAME.get(name, name) in conda, f"{name} missing from environment.yml"
    assert "faiss-cpu" not in conda  # GPU users get the GPU build
    assert "python" in conda and "pytorch-gpu" in conda
    assert "-e ." in pip


def test_timm_is_an_optional_extra_imported_lazily():
    """timm: its own extra, in dev (the tests use it) and in environment.yml; no module of
    sslkit/ or linear_eval/ imports it at import time (sslkit works without it)."""
    extras = _pyproject()["project"]["optional-dependencies"]
    assert [_name(d) for d in extras["timm"]] == ["timm"]
    assert extras["timm"][0] in extras["dev"]
    pip = next(d for d in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
               if isinstance(d, dict))["pip"]
    assert extras["timm"][0] in pip
    for path in [*(ROOT / "sslkit").rglob("*.py"), *(ROOT / "linear_eval").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: imports inside functions are lazy
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "timm" for n in names), path


@pytest.mark.parametrize("extra, module", [("webdataset", "webdataset"), ("parquet", "pyarrow")])
def test_shard_readers_are_optional_extras_imported_lazily(extra, module):
    """webdataset and pyarrow: their own extras, in dev and in environment.yml; imported only
    inside the functions of the shard sources (sslkit works without them)."""
    extras = _pyproject()["project"]["optional-dependencies"]
    assert [_name(d) for d in extras[extra]] == [module]
    assert extras[extra][0] in extras["dev"]
    pip = next(d for d in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
               if isinstance(d, dict))["pip"]
    assert extras[extra][0] in pip
    for path in [*(ROOT / "sslkit").rglob("*.py"), *(ROOT / "linear_eval").rglob("*.py")]:
        for node in ast.parse(path.read_text()).body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == module for n in names), path


def test_console_scripts_resolve():
    scripts = _pyproject()["project"]["scripts"]
    assert set(scripts) == {"sslkit-pretrain", "sslkit-lincls", "sslkit-finetune"}
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in ci and "dataset-fashion-mnist" in ci
    assert "conda env create -f environment.yml" in readme
    gitignore = (ROOT / ".gitignore").read_text().split()
    # anchored: a bare data/ would also hide the sslkit/data/ package from git
    assert {".venv/", "/runs/", "/data/"} <= set(gitignore)


def test_make_offers_a_cpu_only_torch(tmp_path):
    """`make setup TORCH=cpu` installs torch and torchvision from PyTorch's CPU wheel index
    before the package (so pip keeps them); plain `make setup` does not touch the index."""
    import subprocess

    def plan(*extra: str) -> list[str]:
        out = subprocess.run(["make", "-n", "setup", f"VENV={tmp_path / 'v'}", *extra],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return [ln for ln in out.splitlines() if "pip install" in ln]

    cpu = plan("TORCH=cpu")
    assert len(cpu) == 2 and "download.pytorch.org/whl/cpu" in cpu[0]
    assert "torch torchvision" in cpu[0] and "-e '.[dev]'" in cpu[1]
    default = plan()
    assert len(default) == 1 and "download.pytorch.org" not in default[0]
