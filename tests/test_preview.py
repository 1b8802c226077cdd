"""The augmentation preview (python -m sslkit.preview) and ImageFolder pretraining from the
whole image, end to end."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, run_cli
from helpers_tiny import tiny_overrides
from sslkit import config
from sslkit.methods import resolved
from sslkit.train.engine import pretrain
from sslkit.views.pipeline import build_pretrain_input
from test_crops import jpeg_folder, photo
from conftest import ROOT


def _sets(items):
    return [a for it in items for a in ("--set", it)]


def folder_overrides(root, out, extra=()):
    return tiny_overrides(out, epochs=1, extra=[
        "data.name=imagefolder", f"data.root={root}", "data.image_size=32",
        "data.num_workers=0", "train.batch_size=4", "method.queue_size=16", "method.bn_splits=2",
        "eval.knn_every=1", "eval.knn_k=3", "eval.knn_ks=[3]", *extra])


def test_preview_png_through_the_pretraining_pipeline(tmp_path):
    root = jpeg_folder(tmp_path / "data")
    out = tmp_path / "grid.png"
    proc = run_cli("-m", "sslkit.preview", "--n", "4", "--out", str(out),
                   *_sets(folder_overrides(root, tmp_path / "run")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    grid = Image.open(out)
    assert grid.mode == "RGB" and grid.height == 3 * (3 * 32 + 2) + 2  # 3 rows, 32 px x3


def test_preview_rows_and_boxes(tmp_path):
    """The preview's views are the pipeline's; the originals row holds the whole image (its
    borders included) with both crop boxes drawn on it."""
    root = jpeg_folder(tmp_path / "data")
    cfg = resolved(config.load(None, folder_overrides(root, tmp_path / "run")))
    pipe = build_pretrain_input(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    originals, v1, v2 = pipe.preview([0, 1], seed=5)
    assert originals.shape == v1.shape == v2.shape == (2, 3, 32, 32)
    red = (originals[:, 0] > 0.85) & (originals[:, 1] < 0.35) & (originals[:, 2] < 0.35)
    blue = (originals[:, 2] > 0.8) & (originals[:, 0] < 0.25)
    assert red.any() and blue.any()  # the two boxes


@pytest.mark.parametrize("argv, fragment", [
    (["--config", "nope.yaml"], "does not exist"),
    (["--set", "train.epochz=3"], "did you mean 'train.epochs'"),
    (["--set", "data.name=imagefolder", "data.root=/nonexistent"], "does not exist"),
    (["--out", "/nonexistent/dir/grid.png"], "not a writable directory"),
    (["--out", "grid.jpg"], "PNG"),
    (["--n", "0"], "at least 1"),
])
def test_preview_bad_input_is_one_line(tmp_path, argv, fragment):
    proc = run_cli("-m", "sslkit.preview", *argv, cwd=tmp_path)
    assert_one_line_error(proc, fragment)
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("crop_from", ["original", "square"])
def test_imagefolder_pretraining_end_to_end(tmp_path, crop_from):
    root = jpeg_folder(tmp_path / "data")
    out = tmp_path / "run"
    cfg = config.load(None, folder_overrides(root, out, [f"data.crop_from={crop_from}"]))
    summary = pretrain(cfg)
    assert summary.steps == 1 and summary.backbone is not None  # 6 images // 4 = 1 step
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("knn_top1" in r for r in lines) and any("loss" in r for r in lines)


def test_unlabelled_flat_folder_pretrains_with_the_starter_config(tmp_path):
    """configs/imagefolder.yaml on a flat folder of photos (no class folders, no train/):
    pretraining runs, without the online kNN; evaluation asks for class folders."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(8):
        Image.fromarray(photo(96, 128, k)).save(photos / f"{k}.jpg", quality=90)
    starter = config.load(None)  # the schema defaults, then the starter on top
    cfg = config.load(ROOT / "configs" / "imagefolder.yaml", [
        f"data.root={photos}", f"run.output_dir={tmp_path / 'run'}", "run.device=cpu",
        "run.progress=false", "data.image_size=32", "data.num_workers=0",
        "train.batch_size=4", "train.epochs=1", "method.queue_size=16", "method.bn_splits=2",
        "model.width=4"])
    assert starter.data.name != cfg.data.name and cfg.data.channels == 3
    summary = pretrain(cfg)
    assert summary.steps == 2 and summary.knn_top1 is None
    from sslkit.data import build_dataset
    from sslkit.errors import DataError
    with pytest.raises(DataError, match="without class folders"):
        build_dataset("imagefolder", str(photos), "train")
