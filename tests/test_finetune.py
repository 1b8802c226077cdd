"""End-to-end fine-tuning (run_finetune.py) and the labelled images of the semi-supervised
protocol: the step against hand-written SGD-Nesterov and AdamW updates, layer-wise LR decay
against BEiT's formula, the class-balanced label fraction, SimCLR's subset files, a
published-layout checkpoint, exact resume and the linear probe on the same labels."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from helpers_tiny import lincls_items
from sslkit import config
from sslkit.data import (build_dataset, label_fraction_indices, labelled_subset,
                         read_subset_file)
from sslkit.errors import ConfigError, DataError
from sslkit.evaluation.classifier import (Classifier, FinetuneStep, build_classifier,
                                          build_criterion, build_optimizer, build_scheduler,
                                          layer_id)
from sslkit.evaluation.finetune import FinetuneRun, run_finetune

pytestmark = pytest.mark.usefixtures("one_thread")

FT = ["finetune.epochs=2", "finetune.batch_size=16", "finetune.lr=0.5", "run.log_every_steps=1"]


# --------------------------------------------------------------------------- few labels
def test_label_fraction_is_class_balanced_seeded_and_nested():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 7 + [-1] * 5)  # 157 labelled
    idx = label_fraction_indices(labels, 0.1, seed=3)
    # n = round(0.1 * 157) = 16 over 3 classes: 5 each, one class of the seeded order gets 6
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert sum(counts) == 16 and sorted(counts) == [5, 5, 6]
    assert bool((labels[idx] >= 0).all())  # unlabelled images are never chosen
    assert torch.equal(idx, label_fraction_indices(labels, 0.1, seed=3))  # same seed, same images
    assert not torch.equal(idx, label_fraction_indices(labels, 0.1, seed=4))
    tiny = label_fraction_indices(labels, 0.001, seed=3)  # at least one image per class
    assert torch.bincount(labels[tiny], minlength=3).tolist() == [1, 1, 1]
    small = set(label_fraction_indices(labels, 0.05, seed=7).tolist())
    large = set(label_fraction_indices(labels, 0.3, seed=7).tolist())
    assert small < large  # one seed: the smaller fraction lies inside the larger
    # a class smaller than its share gives what it has
    assert torch.bincount(labels[label_fraction_indices(labels, 0.5, 0)],
                          minlength=3).tolist() == [26, 26, 7]
    balanced = torch.arange(6000) % 10  # Fashion-MNIST-like: 1 % is 6 images of each class
    assert torch.bincount(balanced[label_fraction_indices(balanced, 0.01, 0)]).tolist() == [6] * 10
    assert len(label_fraction_indices(balanced, 1.0, 0)) == 6000
    assert label_fraction_indices(labels, 1.0, 0).tolist() == list(range(157))  # 1: all
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="label_fraction"):
            label_fraction_indices(labels, bad)


def _png(path: Path, value: int) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), (value, value, value)).save(path)


def _folder(root: Path) -> Path:
    for split in ("train", "val"):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(4):
                _png(root / split / cls / f"{cls}_{i}.png", 30 * i + 100 * c)
    _png(root / "train" / "dog" / "cat_0.png", 7)  # the same file name in two classes
    return root


def test_subset_file_is_read_exactly(tmp_path):
    root = _folder(tmp_path / "imgs")
    ds = build_dataset("imagefolder", str(root), "train", load_size=16)
    subset = tmp_path / "1percent.txt"
    subset.write_text("dog_2.png\n\n# a comment\ncat_3.png\ndog_2.png\ndog/cat_0.png\n")
    assert read_subset_file(str(subset)) == ["dog_2.png", "cat_3.png", "dog/cat_0.png"]
    picked = labelled_subset(ds, "imagefolder", None, str(subset))
    names = sorted(str(Path(p).relative_to(root / "train")) for p, _ in picked.samples)
    assert names == ["cat/cat_3.png", "dog/cat_0.png", "dog/dog_2.png"]
    assert picked.labels.tolist() == [0, 1, 1]
    subset.write_text("dog_2.png\nnope_1.JPEG\nnope_2.JPEG\n")  # the first missing, and how many
    with pytest.raises(DataError, match=r"names 2 image\(s\) that are not in the training "
                                        r"folder, e\.g\. 'nope_1\.JPEG'"):
        labelled_subset(ds, "imagefolder", None, str(subset))
    subset.write_text("cat_0.png\n")  # in cat/ and in dog/
    with pytest.raises(DataError, match="more than one image.*class/file"):
        labelled_subset(ds, "imagefolder", None, str(subset))
    synthetic = build_dataset("synthetic", "", "train", image_size=16, synthetic_train=20)
    with pytest.raises(ConfigError, match="holds no files"):
        labelled_subset(synthetic, "synthetic", None, str(subset))
    assert labelled_subset(synthetic, "synthetic", None, None) is synthetic


# --------------------------------------------------------------------------- the step
def _tiny_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 2, 2, generator=g)   # 8 images of 4 pixels
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    model = Classifier(nn.Flatten(), 4, 3, head_init_std=0.5, seed=1)
    return model, x, y


def _cfg(*items: str) -> config.FinetuneConfig:
    return config.build({}, ["finetune.batch_size=256", "finetune.schedule=constant",
                             *items]).finetune


def _hand_grads(w, b, x, y, smoothing):
    """d/dW, d/db of mean cross-entropy against (1 - s) one-hot + s / C, by the formula."""
    logits = x.flatten(1) @ w.T + b
    p = torch.softmax(logits, dim=1)
    q = torch.full_like(p, smoothing / 3) + (1 - smoothing) * nn.functional.one_hot(y, 3)
    d = (p - q) / x.shape[0]
    return d.T @ x.flatten(1), d.sum(0)


def _run_steps(ft, model, x, y, steps):
    opt = build_optimizer(model, ft)
    sched = build_scheduler(opt, ft, total_steps=steps, steps_per_epoch=steps)
    step = FinetuneStep(model, opt, sched, torch.amp.GradScaler("cpu", enabled=False),
                        build_criterion(ft, mixing=False), torch.device("cpu"))
    for s in range(steps):
        step(x, y, s)


def test_sgd_nesterov_step_equals_the_hand_written_update():
    model, x, y = _tiny_problem()
    w, b = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    ft = _cfg("finetune.lr=0.3", "finetune.momentum=0.9", "finetune.nesterov=true",
              "finetune.weight_decay=0.01", "finetune.label_smoothing=0.1")
    _run_steps(ft, model, x, y, 2)
    buf_w = buf_b = None
    for _ in range(2):  # torch.optim.SGD's Nesterov, written out
        gw, gb = _hand_grads(w, b, x, y, 0.1)
        gw, gb = gw + 0.01 * w, gb + 0.01 * b
        buf_w = gw if buf_w is None else 0.9 * buf_w + gw
        buf_b = gb if buf_b is None else 0.9 * buf_b + gb
        w, b = w - 0.3 * (gw + 0.9 * buf_w), b - 0.3 * (gb + 0.9 * buf_b)
    torch.testing.assert_close(model.head.weight.detach(), w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.head.bias.detach(), b, rtol=1e-5, atol=1e-6)


def test_adamw_step_equals_the_hand_written_update():
    """AdamW with decoupled weight decay; exclude_bias_norm keeps the bias out of it."""
    model, x, y = _tiny_problem()
    w, b = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    ft = _cfg("finetune.optimizer=adamw", "finetune.lr=0.01", "finetune.weight_decay=0.05",
              "finetune.exclude_bias_norm=true", "finetune.betas=[0.9,0.999]")
    _run_steps(ft, model, x, y, 3)
    m = {"w": torch.zeros_like(w), "b": torch.zeros_like(b)}
    v = {"w": torch.zeros_like(w), "b": torch.zeros_like(b)}
    for t in range(1, 4):
        gw, gb = _hand_grads(w, b, x, y, 0.0)
        new = {}
        for k, p, g, wd in (("w", w, gw, 0.05), ("b", b, gb, 0.0)):
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g * g
            mhat, vhat = m[k] / (1 - 0.9 ** t), v[k] / (1 - 0.999 ** t)
            new[k] = p * (1 - 0.01 * wd) - 0.01 * mhat / (vhat.sqrt() + 1e-8)
        w, b = new["w"], new["b"]
    torch.testing.assert_close(model.head.weight.detach(), w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.head.bias.detach(), b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- ViT options
def _vit_cfg(*items: str) -> config.Config:
    return config.build({}, ["data.name=synthetic", "data.image_size=16",
                             "model.backbone=vit_tiny", "model.vit_depth=3",
                             "model.patch_size=8", *items])


def test_layer_decay_lr_of_each_vit_block_follows_beit():
    cfg = _vit_cfg("finetune.layer_decay=0.5", "finetune.lr=0.001", "finetune.batch_size=256",
                   "finetune.exclude_bias_norm=true", "finetune.weight_decay=0.05",
                   "finetune.optimizer=adamw")
    model = build_classifier(cfg, None, "", 4)
    opt = build_optimizer(model, cfg.finetune)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    L = 3  # BEiT / MAE: layer i gets decay^(L + 1 - i)

    def layer(name: str) -> int:  # written from the papers' assignment, not from the code
        if name in ("backbone.class_token", "backbone.encoder.pos_embedding") \
                or name.startswith("backbone.conv_proj."):
            return 0
        for j in range(L):
            if name.startswith(f"backbone.encoder.layers.encoder_layer_{j}."):
                return j + 1
        return L + 1  # encoder.ln, head

    names = dict(model.named_parameters())
    assert {layer(n) for n in names} == {0, 1, 2, 3, 4}
    for name, p in names.items():
        lr, wd = lr_of[id(p)]
        assert lr == pytest.approx(0.001 * 0.5 ** (L + 1 - layer(name))), name
        no_decay = p.ndim == 1 or name in ("backbone.class_token",
                                           "backbone.encoder.pos_embedding")
        assert wd == (0.0 if no_decay else 0.05), name
    # every parameter trains (DeiT's model: patch embedding and position embedding too)
    assert all(p.requires_grad for p in names.values())
    # timm's names get the same layers
    assert [layer_id(n, 12) for n in ("backbone.cls_token", "backbone.patch_embed.proj.weight",
                                      "backbone.blocks.0.attn.qkv.weight",
                                      "backbone.blocks.11.mlp.fc2.bias", "backbone.norm.weight",
                                      "head.weight")] == [0, 0, 1, 12, 13, 13]
    with pytest.raises(ConfigError, match="finetune.layer_decay=0.5.*ViT"):
        build_optimizer(build_classifier(config.build({}, lincls_items(Path("x"))), None, "", 4),
                        cfg.finetune)


def test_drop_path_reaches_every_block_and_keeps_the_key_names():
    plain = build_classifier(_vit_cfg(), None, "", 4)
    dropped = build_classifier(_vit_cfg("finetune.drop_path=0.2"), None, "", 4)
    assert list(plain.state_dict()) == list(dropped.state_dict())
    rates = [[m.drop_prob for m in block.modules() if type(m).__name__ == "DropPath"]
             for block in dropped.backbone.encoder.layers]
    assert rates == [[0.0, 0.0], pytest.approx([0.1, 0.1]), pytest.approx([0.2, 0.2])]  # linear
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(dropped.eval()(x), plain.eval()(x))  # no drop at evaluation
    with pytest.raises(ConfigError, match="finetune.drop_path"):
        build_classifier(config.build({}, lincls_items(Path("x")) + ["finetune.drop_path=0.1"]),
                         None, "", 4)


# --------------------------------------------------------------------------- whole runs
def test_a_published_moco_v3_vit_fine_tunes(tmp_path):
    """facebookresearch/moco-v3's ViT file loads as its own code loads it, then fine-tunes
    with the DeiT options (timm's transform, mixup, cutmix, drop path, layer decay)."""
    from official_layouts import moco_v3_lincls_encoder, write_moco_v3_vit

    path = tmp_path / "vit-s.pth.tar"
    official = write_moco_v3_vit(path, img=32, patch=16, depth=2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {backbone: vit_small, vit_depth: 2, patch_size: 16}\n"
                      "data: {name: synthetic, image_size: 32, synthetic_train: 32, "
                      "synthetic_test: 16, synthetic_classes: 4, num_workers: 0}\n")
    sets = ["run.device=cpu", "run.precision=fp32", "run.progress=false",
            "finetune.epochs=1", "finetune.batch_size=16", "finetune.optimizer=adamw",
            "finetune.lr=5e-4", "finetune.layer_decay=0.65", "finetune.drop_path=0.1",
            "finetune.mixup=0.8", "finetune.cutmix=1.0", "finetune.label_smoothing=0.1",
            "finetune.augment=timm", "finetune.rand_augment=rand-m9-mstd0.5-inc1",
            "finetune.random_erasing=0.25"]
    run = FinetuneRun(str(path), str(recipe), sets, None, None)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run.model.backbone.eval()(x),
                                   moco_v3_lincls_encoder(official)(x), rtol=1e-4, atol=1e-4)
    del run
    result = run_finetune(str(path), str(recipe), sets)
    assert result["train_images"] == 32 and result["checkpoint"] == str(path.resolve())
    out = tmp_path / "vit-s_finetune"  # a file of no sslkit run: a folder beside it
    assert json.loads((out / "finetune.json").read_text())["top1"] == result["top1"]
    assert (out / "finetune" / "checkpoints" / "last.pt").exists()


def _weights(out: Path) -> dict:
    return torch.load(out / "finetune" / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_resume_is_exact_and_the_same_command_continues(tiny_run, tmp_path, capsys):
    """Stopped mid-epoch and resumed, the run ends with the weights of the uninterrupted run
    (crops, mixup draws, data order and the schedule all continue)."""
    ckpt = str(tiny_run / "checkpoints" / "last.pt")
    sets = [*FT, "finetune.epochs=2", "finetune.label_fraction=0.5", "finetune.batch_size=8",
            "finetune.mixup=0.4", "finetune.label_smoothing=0.1", "finetune.eval_every=1"]
    whole = run_finetune(ckpt, None, sets, output=str(tmp_path / "whole"))
    assert whole["train_images"] == 48 and len(whole["history"]) == 2
    assert run_finetune(ckpt, None, sets, output=str(tmp_path / "cut"),
                        stop_after_steps=9) == {"stopped_at": 9}  # epoch 2, step 3 of 6
    resumed = run_finetune(ckpt, None, sets, output=str(tmp_path / "cut"))
    assert "resuming from" in capsys.readouterr().out
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["top1"] == whole["top1"] and resumed["history"] == whole["history"]
    again = run_finetune(ckpt, None, sets, output=str(tmp_path / "cut"))
    assert "already finished" in capsys.readouterr().out and again["top1"] == whole["top1"]
    log = [json.loads(ln) for ln in (tmp_path / "cut" / "finetune" / "metrics.jsonl")
           .read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 13))  # each step once


def test_random_init_baseline_and_the_probe_on_the_same_labels(tiny_run, tmp_path):
    """--baseline random-init trains the same network from its seeded init; run_lincls
    with the same finetune.label_fraction trains on the same 12 images."""
    from linear_eval.main import run_lincls

    ckpt = str(tiny_run / "checkpoints" / "last.pt")
    sets = [*FT, "finetune.label_fraction=0.125", "finetune.epochs=1"]
    base = run_finetune(ckpt, None, sets, baseline="random-init", output=str(tmp_path))
    assert base["baseline"] == "random-init" and base["train_images"] == 12
    assert (tmp_path / "baseline_random_init" / "finetune.json").exists()
    assert base["labels"]["per_class"] == [3, 3, 3, 3]
    probe = run_lincls(checkpoint=ckpt, overrides=["eval.mode=cached", "eval.epochs=2",
                                                   "finetune.label_fraction=0.125"],
                       output=str(tmp_path / "probe"))
    assert probe["dataset"]["num_train"] == 12
    assert math.isfinite(probe["linear_top1"])


def test_the_documented_fine_tuning_commands_parse_and_their_configs_load():
    """Every run_finetune.py line of the README and docs/evaluation.md: its flags parse and
    its --config with its --set keys loads and resolves (a renamed key fails here)."""
    import re
    import shlex

    from conftest import ROOT
    from sslkit.cli import finetune_parser
    from sslkit.methods.resolve import resolved

    text = (ROOT / "README.md").read_text() + (ROOT / "docs" / "evaluation.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += [ln.split(" #", 1)[0] for ln in block.replace("\\\n", " ").splitlines()
                  if "run_finetune.py" in ln]
    assert len(lines) >= 6
    for line in lines:
        argv = shlex.split(line)
        args = finetune_parser().parse_args(argv[argv.index(next(
            a for a in argv if a.endswith("run_finetune.py"))) + 1:])
        sets = [s for group in args.overrides for s in group]
        assert args.config and (ROOT / args.config).is_file(), line
        assert resolved(config.load(ROOT / args.config, sets)).finetune.epochs >= 1, line
