"""The benchmarks time the code users run: a pretraining benchmark never writes its own MoCo
step (backward, optimizer) but calls the engine's Trainer.train_step."""
from __future__ import annotations

import ast

from conftest import ROOT

# (file, function): the reference baselines and per-part cost probes allowed to call
# .backward() themselves
ALLOWED = {("gpu_r50.py", "sup_block"), ("bfv2.py", "component_times")}


def _backward_calls(path) -> set[tuple[str, str]]:
    """(file, outermost allowed-or-innermost function) of every ``.backward()`` call: a call
    inside an allowed function (at any depth) is reported under that function's name."""
    found: set[tuple[str, str]] = set()

    def visit(node, chain: tuple[str, ...]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            chain = chain + (node.name,)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "backward":
            allowed = [f for f in chain if (path.name, f) in ALLOWED]
            found.add((path.name, allowed[0] if allowed else (chain[-1] if chain
                                                               else "<module>")))
        for child in ast.iter_child_nodes(node):
            visit(child, chain)

    visit(ast.parse(path.read_text()), ())
    return found


def test_no_benchmark_writes_its_own_moco_step():
    calls = set().union(*(_backward_calls(p) for p in sorted((ROOT / "bench").glob("*.py"))))
    assert calls <= ALLOWED, f"benchmarks that call .backward() themselves: {calls - ALLOWED}"


def _calls(path) -> set[str]:
    """The names called in ``path``: ``f(...)`` gives "f", ``x.f(...)`` gives "f"."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return out


def test_the_pretraining_benchmarks_call_the_engine_step():
    """Each pretraining benchmark calls Trainer.train_step, itself or through
    common.EngineSteps (whose run() calls it): a call, not a mention in a comment."""
    assert "train_step" in _calls(ROOT / "bench" / "common.py")
    for name in ("pretrain.py", "bfv2.py", "gpu_r50.py", "breakdown.py", "online_probe.py",
                 "health.py"):
        assert _calls(ROOT / "bench" / name) & {"train_step", "EngineSteps"}, name


def test_the_call_checker_ignores_mentions(tmp_path):
    mention = tmp_path / "x.py"
    mention.write_text("# train_step\nNOTE = 'EngineSteps'\nprint(NOTE)\n")
    assert not _calls(mention) & {"train_step", "EngineSteps"}


def test_the_checker_sees_a_hand_written_step(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def step(m, v):\n    loss, _ = m(*v)\n    loss.backward()\n")
    assert _backward_calls(bad) == {("x.py", "step")}
