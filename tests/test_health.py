"""The health signals against the papers' formulas, the collapse alarm on images without
information, and a healthy run without it (docs/monitoring.md)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from helpers_tiny import tiny_config, tiny_overrides
from sslkit.errors import RunCollapsed
from sslkit.io.checkpoint import load_checkpoint
from sslkit.methods import build_method
from sslkit.train import health
from sslkit.train.engine import Trainer, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- the formulas
def test_rankme_is_the_entropy_rank_of_garrido_et_al():
    """exp(-sum p_k log p_k), p_k = s_k / ||s||_1 + eps (eq. 1 of the paper)."""
    # singular values 3 and 1: p = (3/4, 1/4)
    assert float(health.rankme(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))) == pytest.approx(
        math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), abs=1e-5)  # 1.7547654
    assert float(health.rankme(torch.eye(6) * 7.0)) == pytest.approx(6.0, abs=1e-4)
    one_line = torch.outer(torch.arange(1.0, 9.0), torch.randn(5))  # rank 1
    assert float(health.rankme(one_line)) == pytest.approx(1.0, abs=1e-4)
    # the epsilon as written: the terms of 1 + eps and of eps (s = (5, 0))
    p = [1.0 + 1e-7, 1e-7]
    assert float(health.rankme(torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]))) == pytest.approx(
        math.exp(-sum(x * math.log(x) for x in p)), rel=1e-6)


def test_embed_std_is_simsiams_std_of_the_normalised_outputs():
    """The std over the rows of each channel of z/||z||, averaged over the channels."""
    z = torch.tensor([[5.0, 0, 0, 0], [0, 2.0, 0, 0]])  # unit rows e1, e2 once normalised
    # channels 0 and 1 hold (1, 0): sample std sqrt(((1/2)^2 + (1/2)^2) / 1); 2 and 3 hold 0
    assert float(health.embed_std(z)) == pytest.approx(2 * math.sqrt(0.5) / 4, abs=1e-6)
    assert float(health.embed_std(torch.ones(10, 8) * 3)) == 0.0  # one point: collapsed
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(8192, 64, generator=g)
    assert float(health.embed_std(spread)) == pytest.approx(1 / math.sqrt(64), rel=0.02)


def test_alignment_and_uniformity_are_wang_and_isolas():
    """align = E ||x - y||^2 over positive pairs, uniform = log E exp(-2 ||x_i - x_j||^2)
    over the pairs i < j, both on unit vectors."""
    e1, e2 = torch.eye(3)[0], torch.eye(3)[1]
    x = torch.stack([e1 * 4, e2])
    assert float(health.alignment(x, torch.stack([e2, e1 * 9]))) == pytest.approx(2.0)
    assert float(health.alignment(x, x * 3)) == pytest.approx(0.0, abs=1e-7)
    y = torch.tensor([[0.6, 0.8, 0.0], [0.0, 1.0, 0.0]])
    assert float(health.alignment(x, y)) == pytest.approx((0.8 + 0.0) / 2)  # 2 - 2 cos
    # e1, e2, -e1: squared distances 2, 4, 2
    pts = torch.stack([e1, e2 * 2, -e1])
    assert float(health.uniformity(pts)) == pytest.approx(
        math.log((2 * math.exp(-4) + math.exp(-8)) / 3), abs=1e-5)
    assert float(health.uniformity(torch.ones(5, 3))) == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- the buffer, the alarm
class _Step:
    def __init__(self, h, q, k):
        self.features, self.observed = h, (q, k)


def test_the_buffer_holds_enough_rows_for_the_rank_to_pass_the_batch():
    """Representations of width 16 from batches of 8: the last 4 batches (32 = 2 x 16 rows)
    are kept, so RankMe can reach 16 where one batch caps it at 8."""
    mon = health.Health(feat_dim=16, local_batch=8)
    assert mon.batches == 4
    g = torch.Generator().manual_seed(0)
    steps = [_Step(torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g),
                   torch.randn(8, 4, generator=g)) for _ in range(6)]
    for s in steps:
        mon.observe(s)
    h = torch.cat([s.features for s in steps[2:]])
    q = torch.cat([s.observed[0] for s in steps[2:]])
    k = torch.cat([s.observed[1] for s in steps[2:]])
    got = mon.signals()
    assert float(got["rankme"]) == pytest.approx(float(health.rankme(h)), rel=1e-6)
    assert float(got["rankme"]) > 12 > float(health.rankme(steps[-1].features))
    assert float(got["embed_std"]) == pytest.approx(float(health.embed_std(q)), rel=1e-6)
    assert float(got["align"]) == pytest.approx(float(health.alignment(q, k)), rel=1e-6)
    assert float(got["uniform"]) == pytest.approx(float(health.uniformity(q)), rel=1e-6)
    mon.clear()
    assert mon.signals() == {}


def test_the_rows_of_a_skipped_non_finite_step_are_left_out():
    mon = health.Health(feat_dim=4, local_batch=4)
    good = _Step(torch.randn(4, 4), torch.randn(4, 8), torch.randn(4, 8))
    mon.observe(good)
    mon.observe(_Step(torch.full((4, 4), float("nan")), torch.randn(4, 8), torch.randn(4, 8)))
    got = mon.signals()
    assert float(got["rankme"]) == pytest.approx(float(health.rankme(good.features)), rel=1e-6)
    assert float(got["align"]) == pytest.approx(float(health.alignment(*good.observed)),
                                                rel=1e-6)


def test_the_alarm_waits_for_a_full_buffer_and_three_log_steps():
    mon = health.Health(feat_dim=4, local_batch=4)  # 2 batches
    step = _Step(torch.randn(4, 4), torch.randn(4, 16), torch.randn(4, 16))
    mon.observe(step)
    assert mon.signals() == {}  # one batch of two: no signal logged, none looked at
    low = {"rankme": 30.0, "embed_std": 0.01, "align": 0.1, "uniform": -0.01}
    assert not mon.check(1, {"loss": 1.0})
    mon.observe(step)
    assert set(mon.signals()) == set(health.SIGNALS)  # and d = 16: the std floor is 0.1 / 4
    assert [mon.check(s, low) for s in (2, 3)] == [False, False]
    assert mon.check(4, {**low, "embed_std": 0.03}) is False  # back over 0.025: count restarts
    assert [mon.check(s, low) for s in (5, 6, 7)] == [False, False, True]
    assert mon.alarm.startswith("embed_std 0.01 at step 7, under 0.025 for 3 log steps")
    assert not mon.check(8, low)  # once per run
    assert "collapse alarm: embed_std 0.01 at step 7" in mon.summary()


@pytest.mark.parametrize("method", ["mocov2", "mocov3"])
def test_the_observed_embeddings_are_the_losss_plain_queries_and_positives(tmp_path, method):
    """What the method hands the signals: the plain stream's queries of view 1 and their
    positive keys, detached (no copy, no gradient). MoCo-v2's single direction gives
    align = 2 - 2 pos_sim exactly."""
    cfg = tiny_config(tmp_path, method=method, bf=True)
    torch.manual_seed(0)
    m = build_method(cfg).train()
    x1, x2 = torch.randn(2, 8, 3, 16, 16).unbind(0)
    loss, stats = m(x1, x2)
    q, k = m.observed
    assert q.shape == k.shape == (8, 16) and not q.requires_grad and not k.requires_grad
    assert m.features.shape == (8, 32)  # the plain rows of the 2B BatchFormer rows
    if method == "mocov2":
        assert float(health.alignment(q, k)) == pytest.approx(2 - 2 * float(stats["pos_sim"]),
                                                              abs=1e-5)


# --------------------------------------------------------------------------- whole runs
def _flat_folder(root: Path, n: int = 64) -> Path:
    """An image folder of ``n`` identical flat grey images: nothing to learn."""
    from PIL import Image

    (root / "train" / "a").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (20, 20), (128, 128, 128)).save(root / "train" / "a" / f"{i}.png")
    return root


def _flat(out: Path, data: Path, extra=()) -> list[str]:
    # 10x the tiny LR: the outputs collapse within ~25 steps (measured: embed_std 0.06 x
    # 1/sqrt(d) at step 25, 0.25 at step 5; rankme 11-15)
    return tiny_overrides(out, epochs=20, extra=[
        "data.name=imagefolder", f"data.root={data}", "eval.knn_every=0",
        "run.aug_grid_every=0", "run.tensorboard=false", "run.log_every_steps=5",
        "optim.lr=0.5", *extra])


def test_flat_images_raise_the_alarm_within_a_few_log_steps(tmp_path, capsys):
    from sslkit import config

    data = _flat_folder(tmp_path / "flat")
    cfg = config.load(None, _flat(tmp_path / "run", data))
    summary = pretrain(cfg, stop_after_steps=60)
    out = capsys.readouterr().out
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning: collapse:")]
    assert len(warnings) == 1, out[-3000:]  # once, and the run goes on (train.on_collapse=warn)
    step = int(warnings[0].split(" at step ")[1].split(",")[0])
    assert step <= 40  # within 8 log steps (the buffer of 4 steps is full from step 5)
    assert summary.steps == 60 and summary.health.startswith("collapse alarm:")
    assert "health: collapse alarm:" in out


def test_on_collapse_stop_is_exit_4_with_one_line_and_a_checkpoint(tmp_path):
    data = _flat_folder(tmp_path / "flat")
    items = _flat(tmp_path / "run", data, ["train.on_collapse=stop", "run.num_threads=1"])
    proc = run_cli("run_pretrain.py", *[a for it in items for a in ("--set", it)])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: the run collapsed: "), lines
    step = int(lines[0].split("checkpoint of step ")[1].split(" ")[0])
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == step
    assert "Traceback" not in proc.stderr


def test_a_resumed_run_keeps_its_alarm_and_stop_watches_again(tmp_path, capsys):
    """The alarm is part of the run's state: resumed after it went off (warn), the run does
    not warn again and its summary names the first crossing, as the uninterrupted run's
    does; resumed after train.on_collapse=stop with stop, it watches again and stops anew."""
    from sslkit import config

    data = _flat_folder(tmp_path / "flat")
    items = _flat(tmp_path / "run", data, ["train.checkpoint_every_steps=5"])
    pretrain(config.load(None, items), stop_after_steps=45)
    first = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning: collapse:")]
    assert len(first) == 1, first
    alarm = first[0].removeprefix("warning: collapse: ").split("; check")[0]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["health"]["alarm"] == alarm
    summary = pretrain(config.load(None, items), resume=True, stop_after_steps=60)
    out = capsys.readouterr().out
    assert "warning: collapse:" not in out
    assert f"note: this run's collapse alarm went off before ({alarm})" in out
    assert summary.steps == 60 and summary.health == f"collapse alarm: {alarm}"

    with pytest.raises(RunCollapsed) as first_stop:
        pretrain(config.load(None, [*items, "train.on_collapse=stop"]), resume=True)
    step = int(str(first_stop.value).split("checkpoint of step ")[1].split(" ")[0])
    assert step >= 60 + 5 * health.PATIENCE  # watched from zero after the resume
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["health"]["alarm"] == alarm


@pytest.mark.parametrize("method", ["mocov2", "mocov3"])
def test_a_healthy_run_raises_no_alarm(tmp_path, method):
    """Synthetic images with class structure, 80 steps: both signals stay over their
    floors (measured: rankme 16-18 of 32, embed_std 2-7x its floor)."""
    cfg = tiny_config(tmp_path / "run", method=method, epochs=5, extra=[
        "data.synthetic_train=256", "eval.knn_every=0", "run.aug_grid_every=0",
        "run.tensorboard=false", "train.on_collapse=stop"])
    summary = pretrain(cfg)
    assert summary.steps == 80 and summary.health.startswith("healthy"), summary.health
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    late = [r for r in recs if r.get("step", 0) >= 4 and "rankme" in r]
    floor = health.floors(16)
    assert min(r["rankme"] for r in late) > 1.3 * floor["rankme"]
    assert min(r["embed_std"] for r in late) > 1.5 * floor["embed_std"]


def test_run_collapsed_is_not_a_user_error():
    """Exit code 4, apart from 2 (the input) and 3 (a lost process)."""
    from sslkit.errors import UserError, guard

    def collapse(argv):
        raise RunCollapsed("the run collapsed: x")

    assert not issubclass(RunCollapsed, UserError)
    assert guard(collapse, []) == 4


def test_trainer_exposes_the_health_of_the_run(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "run", extra=["eval.knn_every=0"]))
    assert trainer.health.batches == 4  # 2 x 32 features / 16 images
    assert trainer.health.summary() == "not measured (no log step)"


def test_the_plot_script_draws_a_run_and_its_ranges(tmp_path):
    """scripts/health_plots.py: a rollback's abandoned steps apart from the run as it went on;
    a PNG; one table row per run (written between the doc's markers)."""
    import importlib.util

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("health_plots",
                                                  ROOT / "scripts" / "health_plots.py")
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(tiny_config(run).to_yaml())  # method.proj_dim 16
    recs = [{"step": s, "loss": 4.0, "rankme": 10.0 + s, "embed_std": 0.05, "align": 0.5,
             "uniform": -1.0} for s in (1, 2, 3)]
    recs += [{"event": "rollback", "step": 4, "loss": 99.0, "lr_factor": 0.5, "to_step": 2}]
    recs += [{"step": s, "loss": 4.0, "rankme": 20.0 + s, "embed_std": 0.05, "align": 0.5,
              "uniform": -1.0} for s in range(3, 21)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    train, rollbacks, d = plots.read_run(run)
    parts = plots.segments(train)
    assert [[r["step"] for r in p] for p in parts] == [[3], [1, 2, *range(3, 21)]]
    assert d == 16 and rollbacks == [recs[3]]
    plots.plot([run], ["a run"], tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    rows = plots.ranges([run], ["a run"])
    assert rows[2].startswith("| a run | 20 | ") and "0.2 / 0.2 / 0.2" in rows[2]  # 0.05 x 4
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{plots.BEGIN}\nold\n{plots.END}\nafter\n")
    plots.write_doc(doc, rows)
    assert doc.read_text() == f"before\n{plots.BEGIN}\n" + "\n".join(rows) + \
        f"\n{plots.END}\nafter\n"
