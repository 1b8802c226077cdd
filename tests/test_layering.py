"""The import graph of sslkit/ and linear_eval/: no cycle, and every arrow points down.

Layers, bottom to top (see docs/architecture.md), by package; the package root holds only
the public Python API and the entry points:
  0 foundation       errors, distributed, config/ (schema, loading)
  1 building blocks  data/, views/, models/, io/; augment, losses, knn, export
  2 methods          methods/ (the registry, MoCo-v2, MoCo-v3, the config a run resolves to)
  3 entry points     train/ (the loop and its life), evaluation/, preview; linear_eval/
  4 the CLI          cli
A module may import its own layer or a lower one; only the CLI may reach linear_eval, and no
module imports the CLI. Imports inside functions must say why (a comment on the line).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

LAYERS = {
    "sslkit": 0, "sslkit.errors": 0, "sslkit.distributed": 0, "sslkit.config": 0,
    "sslkit.data": 1, "sslkit.views": 1, "sslkit.models": 1, "sslkit.io": 1,
    "sslkit.augment": 1, "sslkit.losses": 1, "sslkit.knn": 1, "sslkit.export": 1,
    "sslkit.methods": 2,
    "sslkit.train": 3, "sslkit.evaluation": 3, "sslkit.preview": 3, "linear_eval": 3,
    "sslkit.cli": 4,
}
PACKAGES = ("config", "data", "views", "models", "io", "methods", "train", "evaluation")
ROOT_MODULES = ("__init__", "augment", "cli", "distributed", "errors", "export", "knn",
                "losses", "preview")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("sslkit", "linear_eval"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def _resolve(name: str) -> str | None:
    """The project module an imported name refers to (None for third-party names)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        targets = {_resolve(n) for n in names} - {None, module}
        found += [(t, node.lineno, id(node) in nested) for t in sorted(targets)]
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for m in MODULES:
        _layer(m)


def _violations(module: str, imports: list[tuple[str, int, bool]]) -> list[str]:
    out = []
    for target, line, _ in imports:
        where = f"{module}:{line} imports {target}"
        if target == "sslkit.cli":
            out.append(f"{where}: nothing may import the CLI")
        elif target.startswith("linear_eval") and module.startswith("sslkit") \
                and module != "sslkit.cli":
            out.append(f"{where}: only the CLI may reach linear_eval")
        elif _layer(target) > _layer(module):
            out.append(f"{where}: an arrow up the layers")
    return out


@pytest.mark.parametrize("module", sorted(MODULES))
def test_arrows_point_down(module):
    assert _violations(module, GRAPH[module]) == []


def test_no_import_cycle():
    edges = {m: {t for t, _, _ in GRAPH[m]} for m in MODULES}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycle = path[path.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])


def test_imports_inside_functions_say_why():
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(f):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    assert "#" in lines[node.lineno - 1], (
                        f"{path.relative_to(ROOT)}:{node.lineno}: an import inside a function "
                        f"needs a comment saying what it saves (or move it to the top)")


def test_the_checker_sees_violations():
    """The graph test can fail: each kind of bad arrow is reported."""
    assert "nothing may import the CLI" in _violations("sslkit.data.info", [("sslkit.cli", 1, False)])[0]
    assert "only the CLI" in _violations("sslkit.train.engine", [("linear_eval.main", 1, True)])[0]
    assert "up the layers" in _violations("sslkit.losses", [("sslkit.methods.base", 1, False)])[0]
    assert _violations("sslkit.cli", [("linear_eval.main", 1, True)]) == []


MAX_ROOM_LINES = 450  # a module a newcomer can read in one sitting


def test_no_room_is_too_large():
    """Every module of sslkit/ and linear_eval/ stays under MAX_ROOM_LINES lines."""
    large = {str(p.relative_to(ROOT)): n for p in MODULES.values()
             if (n := len(p.read_text().splitlines())) > MAX_ROOM_LINES}
    assert not large, f"split these modules (> {MAX_ROOM_LINES} lines): {large}"


def test_config_package_split_by_concern():
    """The schema and the YAML reading are separate rooms, each of at most 400 lines, and
    neither knows the methods or the models (their rules live with them)."""
    for name in ("sslkit.config.schema", "sslkit.config.loading"):
        assert len(MODULES[name].read_text().splitlines()) <= 400, name
        assert not [t for t, _, _ in GRAPH[name] if not t.startswith(("sslkit.config",
                                                                       "sslkit.errors"))]


def test_the_root_holds_the_public_api_and_packages_by_concern():
    """sslkit/ itself: the public modules and entry points only (at most ten); everything else
    in the packages named in LAYERS, one layer each."""
    root = ROOT / "sslkit"
    modules = sorted(p.stem for p in root.glob("*.py"))
    assert modules == sorted(ROOT_MODULES) and len(modules) <= 10, modules
    packages = sorted(p.name for p in root.iterdir()
                      if p.is_dir() and (p / "__init__.py").exists())
    assert packages == sorted(PACKAGES), packages
    assert all(f"sslkit.{p}" in LAYERS for p in PACKAGES)
    # a package has one layer: no module inside it overrides its package's entry
    assert not [k for k in LAYERS if k.count(".") > 1 and k.split(".")[1] in PACKAGES]


def test_no_two_modules_share_a_name():
    names = [p.stem for p in (ROOT / "sslkit").rglob("*.py") if p.stem != "__init__"]
    assert sorted(set(n for n in names if names.count(n) > 1)) == []


def _unused_imports(path: Path) -> list[str]:
    """Names a module imports at its top level and never uses (``__init__`` re-exports and
    ``__all__`` entries excepted); names in string annotations count as used."""
    tree = ast.parse(path.read_text())
    imported: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                imported[(a.asname or a.name).split(".")[0]] = node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            for a in node.names:
                imported[a.asname or a.name] = node.lineno
    used: set[str] = set()

    def names_in(expr: ast.AST) -> None:
        for n in ast.walk(expr):
            if isinstance(n, ast.Name):
                used.add(n.id)
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                try:  # a quoted annotation
                    names_in(ast.parse(n.value, mode="eval"))
                except SyntaxError:
                    pass

    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            used.add(node.id)
        for ann in (getattr(node, "annotation", None), getattr(node, "returns", None)):
            if ann is not None:
                names_in(ann)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__"
                                                for t in node.targets):
            used.update(e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant))
    return [f"{path.relative_to(ROOT)}:{line} {name}" for name, line in imported.items()
            if name not in used]


def test_no_unused_imports():
    """In the package, the evaluation entry, the scripts, the benchmarks and the tests."""
    files = [p for p in MODULES.values() if p.name != "__init__.py"]
    files += [p for d in ("bench", "scripts", "tests", ".") for p in sorted((ROOT / d).glob("*.py"))
              if not p.name.startswith("_unused")]
    assert [u for p in files for u in _unused_imports(p)] == []


def test_the_unused_import_checker_can_fail(tmp_path):
    bad = ROOT / "tests" / "_unused_probe.py"
    try:
        bad.write_text("import os\nfrom typing import Any, Optional\n\n"
                       "def f(x: 'Optional[int]') -> None:\n    return None\n")
        assert [u.split()[-1] for u in _unused_imports(bad)] == ["os", "Any"]
    finally:
        bad.unlink()
