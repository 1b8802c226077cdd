"""The import graph of sslkit/ and linear_eval/: no cycle, and every arrow points down.

Layers, bottom to top (see docs/architecture.md):
  0 errors, distributed, config (schema, loading)
  1 data, augment, models, losses, optim, checkpoint, runtime, features, knn, export, formats,
    rundir, metrics, pipeline, online_probe, grid, lifecycle,
    photometric
  2 methods, resolved (the defaults and rules that methods and models own)
  3 the engine and evaluation (linear_eval)
  4 the CLI
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
    "sslkit.data": 1, "sslkit.augment": 1, "sslkit.models": 1, "sslkit.losses": 1,
    "sslkit.optim": 1, "sslkit.checkpoint": 1, "sslkit.runtime": 1, "sslkit.features": 1,
    "sslkit.knn": 1, "sslkit.export": 1, "sslkit.formats": 1, "sslkit.rundir": 1,
    "sslkit.metrics": 1, "sslkit.pipeline": 1, "sslkit.online_probe": 1, "sslkit.grid": 1,
    "sslkit.lifecycle": 1, "sslkit.photometric": 1,
    "sslkit.methods": 2, "sslkit.resolved": 2,
    "sslkit.engine": 3, "sslkit.step": 3, "sslkit.preview": 3, "linear_eval": 3,
    "sslkit.cli": 4,
}


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
    assert "only the CLI" in _violations("sslkit.engine", [("linear_eval.main", 1, True)])[0]
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
