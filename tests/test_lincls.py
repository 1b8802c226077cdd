"""Linear evaluation: transforms, feature extraction, both probes, run_lincls.py end to end
and its one-line errors for bad checkpoints."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import assert_one_line_error, run_cli
from linear_eval.cached import LinearHeads, Standardizer, cached_probe, stratified_split
from linear_eval.common import lr_at_epoch
from linear_eval.standard import (BackboneChangedError, check_unchanged, init_linear,
                                  snapshot_state, standard_probe)
from linear_eval.transforms import ProbeTrainTransform
from sslkit import config
from sslkit.augment import CenterView
from sslkit.evaluation.features import extract_features


def eval_cfg(**kw) -> config.EvalConfig:
    return config.build({"eval": kw}).eval


def separable(n, dim, classes, seed, margin=4.0):
    """Linearly separable features: class means far apart relative to unit noise."""
    g = torch.Generator().manual_seed(seed)
    centres = margin * torch.randn(classes, dim, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, dim, generator=g), y


# --------------------------------------------------------------------------- transforms
def test_probe_train_transform_shapes_and_modes():
    small = ProbeTrainTransform(16, [0.5], [0.5], channels=3)
    large = ProbeTrainTransform(96, [0.5], [0.5], channels=3)
    assert small.small and not large.small
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    assert small(x).shape == (4, 3, 16, 16)
    big = torch.randint(0, 256, (4, 3, 110, 110), dtype=torch.uint8)
    assert large(big).shape == (4, 3, 96, 96)
    # padding crop + flip keep the pixel multiset except for the zero padding
    torch.manual_seed(0)
    y = small(torch.full((8, 3, 16, 16), 255, dtype=torch.uint8))
    vals = set(torch.unique(y).tolist())
    assert vals <= {(0 - 0.5) / 0.5, (1 - 0.5) / 0.5}


def test_extract_features_eval_mode_no_grad_and_batching():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1))  # output (B, 4, 1, 1): flattened
    net.train()
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(10)
    tf = CenterView(8, 3, [0.5], [0.25])
    before = snapshot_state(net)
    f, y = extract_features(net, (images, labels), torch.device("cpu"), "fp32", tf, batch_size=3)
    assert f.shape == (10, 4) and f.dtype == torch.float32 and not f.requires_grad
    assert torch.equal(y, labels)
    assert net.training  # mode restored
    check_unchanged(net, before)  # eval mode: BN running stats untouched
    net.eval()
    with torch.no_grad():
        want = net(tf(images)).flatten(1)
    torch.testing.assert_close(f, want)
    f2, _ = extract_features(net, [(images[:5], labels[:5]), (images[5:], labels[5:])],
                             torch.device("cpu"), "fp32", tf)
    torch.testing.assert_close(f2, want)


# --------------------------------------------------------------------------- shared pieces
def test_lr_schedules():
    # MoCo-v2: lr 30, x0.1 at 60 and 80 of 100 epochs
    assert lr_at_epoch(30, 59, 100, "step", [0.6, 0.8]) == 30
    assert lr_at_epoch(30, 60, 100, "step", [0.6, 0.8]) == pytest.approx(3)
    assert lr_at_epoch(30, 79, 100, "step", [0.6, 0.8]) == pytest.approx(3)
    assert lr_at_epoch(30, 80, 100, "step", [0.6, 0.8]) == pytest.approx(0.3)
    # MoCo-v3: cosine per epoch
    assert lr_at_epoch(0.4, 0, 90, "cosine", []) == pytest.approx(0.4)
    assert lr_at_epoch(0.4, 45, 90, "cosine", []) == pytest.approx(0.2)
    assert lr_at_epoch(0.4, 89, 90, "cosine", []) == pytest.approx(
        0.4 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))


def test_fc_init_follows_moco():
    fc = init_linear(512, 1000, seed=0)
    w = fc.weight.detach()
    assert w.shape == (1000, 512)
    assert abs(float(w.mean())) < 1e-3
    assert float(w.std()) == pytest.approx(0.01, rel=0.02)
    assert torch.count_nonzero(fc.bias) == 0


def test_stratified_split():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20 + [3])
    fit, val = stratified_split(y, 0.1, seed=0)
    assert sorted(fit.tolist() + val.tolist()) == list(range(len(y)))
    assert set(fit.tolist()).isdisjoint(val.tolist())
    counts = torch.bincount(y[val], minlength=4).tolist()
    assert counts == [5, 3, 2, 0]  # round(0.1 n_c); the single-sample class stays in fit
    fit2, val2 = stratified_split(y, 0.1, seed=0)
    assert torch.equal(val, val2)  # seeded


def test_standardizer():
    x = torch.randn(500, 6) * torch.tensor([1, 2, 3, 4, 5, 0.0]) + 7
    z = Standardizer(x)(x)
    torch.testing.assert_close(z[:, :5].mean(0), torch.zeros(5), atol=1e-4, rtol=0)
    torch.testing.assert_close(z[:, :5].std(0, unbiased=False), torch.ones(5), atol=1e-4, rtol=0)
    assert torch.isfinite(z).all()  # constant dimension: no division by zero


# --------------------------------------------------------------------------- cached probe
def test_linear_heads_equal_torch_sgd_per_head():
    """Each stacked head follows exactly torch.optim.SGD(momentum=0.9, wd) with its own lr."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    lrs, wds = [0.1, 0.5, 0.02], [0.0, 1e-2, 1e-3]
    heads = LinearHeads(5, 3, lrs, wds, seed=3)
    refs = []
    for lr, wd in zip(lrs, wds):
        fc = nn.Linear(5, 3)
        with torch.no_grad():
            fc.weight.copy_(heads.W[:, 0, :].T)
            fc.bias.zero_()
        refs.append((fc, torch.optim.SGD(fc.parameters(), lr=lr, momentum=0.9, weight_decay=wd)))
    for step in range(6):
        idx = torch.arange(step * 10, step * 10 + 16) % 64
        factor = 0.5 if step >= 4 else 1.0
        loss = heads.step(x[idx], y[idx], factor, with_loss=True)
        for h, (fc, opt) in enumerate(refs):
            for group in opt.param_groups:
                group["lr"] = lrs[h] * factor
            ref_loss = nn.functional.cross_entropy(fc(x[idx]), y[idx])
            assert float(loss[h]) == pytest.approx(float(ref_loss.detach()), rel=1e-5)
            opt.zero_grad()
            ref_loss.backward()
            opt.step()
    for h, (fc, _) in enumerate(refs):
        torch.testing.assert_close(heads.W[:, h, :].T, fc.weight.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(heads.b[h], fc.bias.detach(), rtol=1e-5, atol=1e-6)


def test_cached_probe_on_separable_features():
    xtr, ytr = separable(3000, 32, 10, seed=0)
    xte, yte = separable(1000, 32, 10, seed=1)
    cfg = eval_cfg(epochs=5, batch_size=256, lr_grid=[0.01, 0.1, 1.0], wd_grid=[0.0, 1e-4],
                   schedule="cosine")
    r = cached_probe(xtr, ytr, xte, yte, 10, cfg, seed=0)
    assert r["linear_top1"] > 95 and r["linear_top5"] >= r["linear_top1"]
    assert [(row["lr"], row["wd"]) for row in r["table"]] == [
        (lr, wd) for lr in cfg.lr_grid for wd in cfg.wd_grid]
    assert (r["selected"]["lr"], r["selected"]["wd"]) in {(row["lr"], row["wd"])
                                                          for row in r["table"]}
    best = max(row["val_top1"] for row in r["table"])
    assert r["selected"]["val_top1"] == best
    assert r["num_val"] == 300 and r["num_fit"] == 2700


def test_cached_probe_survives_a_diverging_lr_and_uses_aug_copies():
    xtr, ytr = separable(600, 8, 4, seed=2)
    xte, yte = separable(200, 8, 4, seed=3)
    cfg = eval_cfg(epochs=3, lr_grid=[1e38, 0.1], wd_grid=[0.0])  # 1e38: overflows to inf
    aug = [xtr + 0.1 * torch.randn_like(xtr)]
    r = cached_probe(xtr, ytr, xte, yte, 4, cfg, aug_features=aug, seed=0)
    assert r["table"][0]["diverged"] and not r["table"][1]["diverged"]
    assert r["selected"]["lr"] == 0.1
    assert r["num_fit"] == 2 * (600 - r["num_val"]) and r["aug_copies"] == 1
    assert r["linear_top1"] > 90
    assert all(math.isfinite(row["val_top1"]) for row in r["table"])


# --------------------------------------------------------------------------- standard probe
def _colour_images(n, seed, size=12):
    """Two classes told apart by the colour of a noisy image (an easy linear problem)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    base = torch.where(y.view(-1, 1, 1, 1) == 0, torch.tensor([0.7, 0.3, 0.3]).view(1, 3, 1, 1),
                       torch.tensor([0.3, 0.3, 0.7]).view(1, 3, 1, 1))
    x = base + 0.15 * torch.randn(n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), y


def _tiny_backbone():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


class _TrainsItsBN(nn.Module):
    """A buggy backbone: it switches its BN to train mode, so running stats move."""

    def __init__(self):
        super().__init__()
        self.net = _tiny_backbone()

    def forward(self, x):
        self.net[1].train()
        return self.net(x)


def _std_args(size=12):
    return dict(train_transform=ProbeTrainTransform(size, [0.5], [0.25], 3),
                test_transform=CenterView(size, 3, [0.5], [0.25]),
                device=torch.device("cpu"), precision="fp32", seed=0)


def test_standard_probe_learns_and_keeps_backbone_frozen():
    train = _colour_images(256, 0)
    test = _colour_images(128, 1)
    net = _tiny_backbone()
    before = snapshot_state(net)
    cfg = eval_cfg(epochs=4, batch_size=32, lr=1.0, schedule="step", milestones=[0.75])
    r = standard_probe(net, 8, 2, train, test, cfg, **_std_args())
    assert r["linear_top1"] > 90, r
    assert len(r["history"]) == 4 and r["history"][-1]["lr"] == pytest.approx(0.1 * 32 / 256)
    assert r["effective_lr"] == pytest.approx(1.0 * 32 / 256)
    assert r["table"] == [{"lr": 1.0, "wd": 0.0, "test_top1": r["linear_top1"],
                           "test_top5": r["linear_top5"],
                           "final_train_loss": r["history"][-1]["loss"]}]
    check_unchanged(net, before)


def test_sanity_check_fires_when_the_backbone_changes():
    net = _tiny_backbone()
    ref = snapshot_state(net)
    check_unchanged(net, ref)
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1e-6
    with pytest.raises(BackboneChangedError, match="0.weight"):
        check_unchanged(net, ref)
    # end to end: BN running statistics updated during the probe are caught too
    cfg = eval_cfg(epochs=1, batch_size=32, lr=0.1)
    with pytest.raises(BackboneChangedError, match="running_mean"):
        standard_probe(_TrainsItsBN(), 8, 2, _colour_images(64, 0), _colour_images(32, 1), cfg,
                       **_std_args())


# --------------------------------------------------------------------------- run_lincls


def _check_eval_json(path: Path, mode: str) -> dict:
    d = json.loads(path.read_text())
    for key in ("linear_top1", "linear_top5", "knn_top1", "knn_top5"):
        assert 0 <= d[key] <= 100, (key, d[key])
    assert d["linear_top5"] >= d["linear_top1"] and d["knn_top5"] >= d["knn_top1"]
    assert d["mode"] == mode and d["probe"]["mode"] == mode
    assert {(r["k"], r["t"]) for r in d["knn"]} == {(5, 0.07), (5, 0.1), (10, 0.07), (10, 0.1)}
    head = [r for r in d["knn"] if (r["k"], r["t"]) == (5, 0.1)][0]
    assert (head["top1"], head["top5"]) == (d["knn_top1"], d["knn_top5"])
    assert d["dataset"]["num_train"] == 96 and d["dataset"]["num_test"] == 48
    assert d["probe"]["table"] and d["probe"]["timings"]["total_s"] > 0
    assert d["timings"]["total_s"] > 0 and d["config"]["eval"]["mode"] == mode
    return d


def test_run_lincls_cli_cached_last_pt(tiny_run):
    proc = run_cli("run_lincls.py", "--checkpoint", str(tiny_run / "checkpoints" / "last.pt"),
                   "--set", "eval.mode=cached", "eval.embedding_samples=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "linear (cached" in proc.stdout and "eval.json" in proc.stdout
    d = _check_eval_json(tiny_run / "eval.json", "cached")
    assert len(d["probe"]["table"]) == 2 and d["checkpoint"].endswith("last.pt")
    assert d["embedding_samples"] == 16
    tb = tiny_run / "tb" / "lincls"
    assert list(tb.glob("events.out.tfevents.*"))
    assert list(tb.rglob("sprite.png")) and list(tb.rglob("metadata.tsv"))
    names = next(tb.rglob("metadata.tsv")).read_text().splitlines()
    assert len(names) == 16 and all(n.startswith("class ") for n in names)  # class names


@pytest.mark.parametrize("source, mode", [("backbone.pt", "standard"),
                                          ("checkpoints/last.pt", "standard"),
                                          ("backbone.pt", "cached")])
def test_run_lincls_end_to_end(tiny_run, tmp_path, source, mode):
    from linear_eval.main import run_lincls
    out = tmp_path / "out"
    run_lincls(checkpoint=str(tiny_run / source), overrides=[f"eval.mode={mode}"],
               output=str(out))
    d = _check_eval_json(out / "eval.json", mode)
    assert d["checkpoint"].endswith(source.split("/")[-1])
    if mode == "standard":
        assert len(d["probe"]["history"]) == 2


def test_same_weights_same_features_from_last_pt_and_backbone_pt(tiny_run, tmp_path):
    from linear_eval.main import run_lincls
    a = run_lincls(checkpoint=str(tiny_run / "checkpoints" / "last.pt"),
                   overrides=["eval.mode=cached"], output=str(tmp_path / "a"))
    b = run_lincls(checkpoint=str(tiny_run / "backbone.pt"), overrides=["eval.mode=cached"],
                   output=str(tmp_path / "b"))
    assert a["knn"] == b["knn"] and a["linear_top1"] == b["linear_top1"]


@pytest.mark.parametrize("baseline, dirname, dim", [("raw-pixels", "baseline_raw_pixels",
                                                     3 * 16 * 16),
                                                    ("random-init", "baseline_random_init",
                                                     32)])
def test_baselines_write_their_own_directory(tiny_run, tmp_path, baseline, dirname, dim):
    from linear_eval.main import run_lincls
    model = tmp_path / "eval.json"
    model.write_text('{"sentinel": 1}')
    run_lincls(checkpoint=str(tiny_run / "backbone.pt"), baseline=baseline,
               overrides=["eval.mode=cached"], output=str(tmp_path))
    assert json.loads(model.read_text()) == {"sentinel": 1}  # the model's eval.json survives
    d = _check_eval_json(tmp_path / dirname / "eval.json", "cached")
    assert d["baseline"] == baseline and d["backbone"]["feat_dim"] == dim


def test_random_init_baseline_from_a_config_without_checkpoint(tiny_run, tmp_path):
    proc = run_cli("run_lincls.py", "--baseline", "random-init", "--config",
                   str(tiny_run / "config.yaml"), "--set", "eval.mode=standard",
                   f"run.output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = _check_eval_json(tmp_path / "baseline_random_init" / "eval.json", "standard")
    assert d["checkpoint"] is None


# --------------------------------------------------------------------------- bad checkpoints
class _Payload:
    """Unpickling this calls open(marker, 'w'): a file appears if the payload ever runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_never_runs(tiny_run, tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "sslkit", "version": 1, "model": {"x": _Payload(marker)},
                "optimizer": {}, "epoch": 0, "step": 0, "config": {}}, evil)
    proc = run_cli("run_lincls.py", "--checkpoint", str(evil))
    assert_one_line_error(proc, "weights_only")
    assert not marker.exists()
    # the payload is live: unsafe loading would have run it (so the check above can fail)
    torch.load(evil, weights_only=False)
    assert marker.exists()


def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.mark.parametrize("case, fragments", [
    ("missing", ["does not exist"]),
    ("empty", ["empty"]),
    ("text", ["is not a PyTorch checkpoint"]),
    ("list", ["in no checkpoint layout sslkit reads", "found a list"]),
    ("corrupt", ["damaged PyTorch file", "corrupt or truncated"]),
    ("no_config", ["no config", "--config"]),
    ("other_arch", ["does not fit", "width 8", "shape"]),
])
def test_bad_checkpoints_are_one_line_errors(tiny_run, tmp_path, case, fragments):
    path = tmp_path / "ckpt.pt"
    extra: list[str] = []
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not a checkpoint\n")
    elif case == "list":
        torch.save([1, 2, 3], path)
    elif case == "corrupt":
        _truncated(tiny_run / "checkpoints" / "last.pt", path)
    elif case == "no_config":
        (tmp_path / "alone").mkdir()
        path = tmp_path / "alone" / "backbone.pt"
        path.write_bytes((tiny_run / "backbone.pt").read_bytes())
    elif case == "other_arch":
        path = tiny_run / "checkpoints" / "last.pt"
        extra = ["--set", "model.width=8"]
    proc = run_cli("run_lincls.py", "--checkpoint", str(path), "--output", str(tmp_path / "o"),
                   *extra)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "o" / "eval.json").exists()
