"""run.precision: auto picks bf16 only where the device computes it natively; an explicit bf16
on a CPU that emulates it runs with a note giving the measured slowdown; the shipped configs
leave the choice to auto."""
from __future__ import annotations

import math
import platform
import re

import pytest
import torch
import yaml

from conftest import ROOT, run_cli
from sslkit.train import runtime
from sslkit.config import RunConfig
from sslkit.errors import ConfigError

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture
def cpu_kind(monkeypatch):
    """``cpu_kind(library, slowdown)``: oneDNN's bf16 check answers ``library`` and the probe
    measures ``slowdown``; returns the list of probe calls."""
    calls: list[int] = []

    def set_kind(library: bool, slowdown: float) -> list[int]:
        monkeypatch.setattr(runtime, "_CPU_BF16", {})
        monkeypatch.setattr(runtime, "_onednn_bf16", lambda: library)

        def probe() -> float:
            calls.append(1)
            return slowdown
        monkeypatch.setattr(runtime, "_probe_slowdown", probe)
        return calls
    return set_kind


def choose(precision: str, device: torch.device = CPU) -> runtime.PrecisionChoice:
    return runtime.choose_precision(RunConfig(precision=precision), device)


def test_auto_on_a_cpu_with_native_bf16_picks_bf16(cpu_kind):
    calls = cpu_kind(library=True, slowdown=0.5)
    c = choose("auto")
    assert c.precision == "bf16" and c.note is None
    assert "natively" in c.reason and "0.50x" in c.reason
    assert choose("auto").precision == "bf16" and len(calls) == 1  # probed once per process


def test_auto_on_a_cpu_without_native_bf16_picks_fp32_without_probing(cpu_kind):
    calls = cpu_kind(library=False, slowdown=12.0)
    c = choose("auto")
    assert c.precision == "fp32" and c.note is None and "no native bf16" in c.reason
    assert calls == []  # oneDNN's own answer is enough: no probe time spent


def test_auto_when_onednn_claims_bf16_but_the_probe_finds_it_slow(cpu_kind):
    """A reported support can be emulated (AVX512 without bf16 instructions, a capped ISA):
    the measured probe decides."""
    cpu_kind(library=True, slowdown=3.0)
    c = choose("auto")
    assert c.precision == "fp32" and "3.00x" in c.reason and "not faster" in c.reason


@pytest.mark.parametrize("bf16_supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_gpu_keeps_the_gpu_rule(cpu_kind, monkeypatch, bf16_supported, expected):
    calls = cpu_kind(library=False, slowdown=12.0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    c = choose("auto", CUDA)
    assert c.precision == expected and "GPU" in c.reason and c.note is None
    assert choose("bf16", CUDA) == runtime.PrecisionChoice("bf16", "as set")
    assert choose("fp16", CUDA).precision == "fp16"
    assert calls == []  # the CPU probe is never run for a GPU


def test_explicit_bf16_on_an_emulating_cpu_runs_with_a_note(cpu_kind):
    calls = cpu_kind(library=False, slowdown=12.34)
    c = choose("bf16")
    assert c.precision == "bf16" and len(calls) == 1  # measured for the note
    assert c.note is not None and "\n" not in c.note and c.note.startswith("note: ")
    assert "12.3x slower than fp32" in c.note and "run.precision=auto picks fp32" in c.note


def test_explicit_bf16_on_a_native_cpu_has_no_note(cpu_kind):
    cpu_kind(library=True, slowdown=0.6)
    assert choose("bf16") == runtime.PrecisionChoice("bf16", "as set")


def test_explicit_fp32_never_probes_and_fp16_needs_cuda(cpu_kind):
    calls = cpu_kind(library=True, slowdown=0.5)
    assert choose("fp32") == runtime.PrecisionChoice("fp32", "as set") and calls == []
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        choose("fp16")


def test_the_real_probe_measures_without_touching_rng_or_threads(monkeypatch):
    monkeypatch.setattr(runtime, "_CPU_BF16", {})
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    cpu = runtime.cpu_bf16(measure=True)
    assert cpu.slowdown is not None and math.isfinite(cpu.slowdown) and cpu.slowdown > 0
    assert 0 < cpu.probe_ms < 5000
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert runtime.cpu_bf16(measure=True) is cpu  # cached per process
    # oneDNN's check agrees with the verdict's first half
    assert cpu.library == runtime._onednn_bf16()


def test_no_shipped_config_pins_a_precision_without_saying_why():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        precision = data.get("run", {}).get("precision", "auto")
        if precision == "auto":
            continue
        line = next(ln for ln in path.read_text().splitlines()
                    if re.match(r"\s*precision:", ln))
        comment = line.partition("#")[2].strip()
        assert len(comment.split()) >= 3, (
            f"{path.name} pins run.precision={precision} without a comment saying why")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="the AVX2 stand-in limits x86 instruction sets")
def test_a_demo_config_run_under_the_avx2_stand_in_picks_fp32(tmp_path):
    """oneDNN and ATen held to AVX2 (as on a CPU without AVX-512): bf16 would be emulated,
    so configs/demo.yaml (run.precision: auto) trains in fp32, and says why."""
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = tmp_path / "run"
    proc = run_cli("run_pretrain.py", "--config", "configs/demo.yaml", "--set",
                   f"run.output_dir={out}", "data.name=synthetic", "data.synthetic_train=64",
                   "data.synthetic_test=32", "train.batch_size=32", "train.max_steps=2",
                   "method.queue_size=64",
                   "run.progress=false", "run.tensorboard=false", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    compute = [ln for ln in proc.stdout.splitlines() if ln.startswith("compute: ")]
    assert compute and compute[0].startswith("compute: cpu, fp32 (auto: "), proc.stdout
    assert "note:" not in proc.stdout
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["precision"] == "auto"
    proc = run_cli("run_pretrain.py", "--config", "configs/demo.yaml", "--set",
                   f"run.output_dir={out}", "data.name=synthetic", "data.synthetic_train=64",
                   "data.synthetic_test=32", "train.batch_size=32", "train.max_steps=1",
                   "method.queue_size=64",
                   "run.progress=false", "run.tensorboard=false", "run.precision=bf16",
                   "--overwrite", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    notes = [ln for ln in proc.stdout.splitlines() if ln.startswith("note: run.precision=bf16")]
    assert len(notes) == 1 and "slower than fp32" in notes[0], proc.stdout


def test_every_benchmark_resolves_its_precision_as_a_run_does():
    """No benchmark pins bf16: ``--precision`` defaults to auto and goes through
    bench_precision (the run's rule), so an AVX2-only CPU is not timed in emulated bf16."""
    for path in sorted((ROOT / "bench").glob("*.py")):
        text = path.read_text()
        assert 'default="bf16"' not in text and 'autocast(dev, "bf16")' not in text, path.name
        assert not re.search(r'bench_trainer\([^)]*"bf16"\)', text, re.S), path.name
        if '"--precision"' in text:
            assert 'default="auto"' in text and "bench_precision(args.precision" in text, path.name
