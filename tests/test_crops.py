"""ImageFolder crops of the whole decoded image (sslkit.data.crops): torchvision's draws,
one decode per image, reduced-size JPEG decoding, the nvjpeg path exercised on the CPU, and
bad files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from sslkit.data import TrainSampler, build_dataset, build_loader
from sslkit.data.crops import (CropSpec, EncodedTwoCropDataset, SeededSampler, TwoCropDataset,
                               decode_two_views, decode_views, draft_scale, draw_views,
                               rrc_params, sample_seed)
from sslkit.errors import DataError

SPEC = CropSpec(size=32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5)


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random RGB picture (JPEG-friendly) of h x w."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def jpeg_folder(root: Path, n: int = 6, quality: int = 90) -> Path:
    """root/train/<a|b>/*.jpg at 4:3 and 3:4, as ImageNet photos, plus root/val/."""
    for split in ("train", "val"):
        for k in range(n):
            h, w = (96, 128) if k % 2 else (128, 96)
            d = root / split / ("a" if k % 3 else "b")
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(h, w, k)).save(d / f"{k}.jpg", quality=quality)
    return root


# --------------------------------------------------------------------------- the draws
@pytest.mark.parametrize("hw", [(375, 500), (500, 375), (32, 32), (20, 300), (300, 20)])
def test_rrc_params_are_torchvisions(hw):
    """Same seed, same boxes as torchvision's RandomResizedCrop.get_params (incl. fallback)."""
    h, w = hw
    img = torch.zeros(3, h, w)
    for seed in range(200):
        for scale, ratio in (((0.08, 1.0), (3 / 4, 4 / 3)), ((0.2, 1.0), (1.0, 1.0)),
                             ((0.9, 1.0), (3.0, 4.0))):
            torch.manual_seed(seed)
            expected = T.RandomResizedCrop.get_params(img, list(scale), list(ratio))
            got = rrc_params(h, w, scale, ratio, torch.Generator().manual_seed(seed))
            assert got == expected, (seed, scale, ratio)


def test_draw_views_seeded_and_flip_rate():
    a = draw_views(375, 500, SPEC, seed=7)
    assert torch.equal(a, draw_views(375, 500, SPEC, seed=7)) and a.shape == (2, 5)
    flips = torch.stack([draw_views(375, 500, SPEC, s)[:, 4] for s in range(400)])
    assert 0.42 < flips.float().mean() < 0.58
    assert not (flips[:, 0] == flips[:, 1]).all()  # the two views flip independently
    assert sample_seed(0, 1, 2) != sample_seed(0, 2, 1) != sample_seed(1, 0, 2)


def test_crops_reach_the_borders_of_the_original():
    """Boxes are drawn on the whole image: over many images some touch each border, and
    their aspect ratios follow the recipe's ratio range in original pixels."""
    h, w = 375, 500
    boxes = torch.cat([draw_views(h, w, SPEC, s)[:, :4] for s in range(300)])
    top, left, bh, bw = boxes.unbind(1)
    assert (top == 0).any() and (left == 0).any()
    assert (top + bh == h).any() and (left + bw == w).any()
    ratio = bw.float() / bh.float()
    assert ratio.min() >= 3 / 4 - 0.02 and ratio.max() <= 4 / 3 + 0.02


# --------------------------------------------------------------------------- CPU decoding
def test_decode_two_views_is_torchvisions_resized_crop(tmp_path):
    """Full-size decode: each view equals torchvision's resized_crop (+ hflip) on the PIL
    image with the drawn box, to within one grey level at the box edges."""
    path = tmp_path / "x.png"
    Image.fromarray(photo(96, 128, 0)).save(path)
    for seed in range(10):
        (v1, v2), params = decode_two_views(str(path), SPEC, seed)
        im = Image.open(path).convert("RGB")
        for view, (top, left, h, w, flip) in zip((v1, v2), params.tolist()):
            ref = TF.resized_crop(im, top, left, h, w, [32, 32], T.InterpolationMode.BILINEAR)
            if flip:
                ref = TF.hflip(ref)
            ref = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1)
            diff = (view.int() - ref.int()).abs()
            assert view.shape == (3, 32, 32) and view.dtype == torch.uint8
            assert diff.float().mean() < 1.0 and diff.max() <= 40


def test_reduced_size_jpeg_decode(tmp_path):
    """A large JPEG with a small output decodes at 1/s scale; the views stay close to a full
    decode (same boxes)."""
    path = tmp_path / "big.jpg"
    Image.fromarray(photo(512, 640, 3)).save(path, quality=90)
    spec = CropSpec(32, (0.5, 1.0), (3 / 4, 4 / 3), 0.0)
    (v1, v2), params = decode_two_views(str(path), spec, seed=1)
    s = draft_scale(params, 32)
    assert s == 8  # boxes of >= 256 px each way
    full = Image.open(path).convert("RGB")
    for view, (top, left, h, w, _) in zip((v1, v2), params.tolist()):
        ref = full.resize((32, 32), Image.BILINEAR, box=(left, top, left + w, top + h))
        ref = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1)
        assert (view.float() - ref.float()).abs().mean() < 4.0
    assert draft_scale(torch.tensor([[0, 0, 40, 300, 0], [0, 0, 300, 300, 0]]), 32) == 1


def test_two_crop_loader_is_seeded_per_image_and_resumable(tmp_path):
    """The views of an image depend on (seed, epoch, index) only: equal for 0 and 2 workers,
    and a mid-epoch start gives the tail of the full epoch."""
    root = jpeg_folder(tmp_path)
    base = build_dataset("imagefolder", str(root), "pretrain", image_size=32)
    ds = TwoCropDataset(base, SPEC)

    def batches(workers: int, start: int = 0):
        sampler = TrainSampler(len(ds), seed=3)
        sampler.set_epoch(1)
        sampler.set_start(start, 2)
        loader = build_loader(ds, 2, train=True, sampler=SeededSampler(sampler, 3),
                              num_workers=workers)
        return [((v1, v2), y) for (v1, v2), y in loader]

    a, b, tail = batches(0), batches(2), batches(0, start=1)
    assert len(a) == 3
    for ((a1, a2), ya), ((b1, b2), yb) in zip(a, b):
        assert torch.equal(a1, b1) and torch.equal(a2, b2) and torch.equal(ya, yb)
    assert all(torch.equal(x[0][0], y[0][0]) for x, y in zip(a[1:], tail))
    assert a[0][0][0].shape == (2, 3, 32, 32) and not torch.equal(a[0][0][0], a[0][0][1])


# --------------------------------------------------------------------------- device decoding
def test_device_decode_path_on_the_cpu(tmp_path):
    """The nvjpeg path (workers read bytes, the batch is decoded and cropped on the device)
    run with device='cpu': same boxes as the PIL path, images within a few grey levels;
    a PNG and a CMYK JPEG fall back to the CPU decoder (counted); grayscale JPEGs work."""
    root = jpeg_folder(tmp_path)
    Image.fromarray(photo(96, 128, 9)).save(root / "train" / "a" / "png.png")
    Image.fromarray(photo(96, 128, 10)).convert("CMYK").save(root / "train" / "a" / "cmyk.jpg")
    Image.fromarray(photo(96, 128, 11)).convert("L").save(root / "train" / "b" / "gray.jpg")
    base = build_dataset("imagefolder", str(root), "pretrain", image_size=32)
    enc, cpu = EncodedTwoCropDataset(base, SPEC), TwoCropDataset(base, SPEC)
    keys = [(i, sample_seed(0, 0, i)) for i in range(len(base))]
    batch = enc.collate([enc.load(k)[0] for k in keys])
    (d1, d2), fallbacks, skipped = decode_views(batch, 32, torch.device("cpu"))
    assert d1.shape == (len(base), 3, 32, 32) and d1.dtype == torch.uint8 and not skipped
    assert fallbacks >= 1  # the PNG at least (CMYK may or may not decode with libjpeg)
    r1, r2 = cpu.collate([cpu.load(k)[0] for k in keys])
    for d, r in ((d1, r1), (d2, r2)):
        assert (d.float() - r.float()).abs().mean() < 3.0
    names = [Path(p).name for p in batch.names]
    assert {"png.png", "cmyk.jpg", "gray.jpg"} <= set(names)


def test_bad_files_one_line_or_skip(tmp_path):
    root = jpeg_folder(tmp_path)
    good = (root / "train" / "a" / "1.jpg").read_bytes()
    (root / "train" / "a" / "trunc.jpg").write_bytes(good[: len(good) // 2])
    (root / "train" / "a" / "text.jpg").write_bytes(b"not an image")
    base = build_dataset("imagefolder", str(root), "pretrain", image_size=32)
    bad = [i for i, (p, _) in enumerate(base.samples) if "trunc" in p or "text" in p]
    for wrapper in (TwoCropDataset, EncodedTwoCropDataset):
        with pytest.raises(DataError, match=r"(trunc|text)\.jpg.*skip_corrupt"):
            wrapper(base, SPEC).load((bad[0], 1))
    skipping = build_dataset("imagefolder", str(root), "pretrain", image_size=32,
                             skip_corrupt=True)
    for wrapper in (TwoCropDataset, EncodedTwoCropDataset):
        payload, label, skipped = wrapper(skipping, SPEC).load((bad[0], 1))
        assert skipped and payload is not None
    # a file the header check passes but no decoder reads: one line, or replaced and reported
    enc = EncodedTwoCropDataset(skipping, SPEC)
    batch = enc.collate([enc.load((i, 1))[0] for i in range(2)])
    batch.data[0] = torch.frombuffer(bytearray(b"\xff\xd8\xff" + b"\x00" * 64), dtype=torch.uint8)
    with pytest.raises(DataError, match="cannot decode image"):
        decode_views(batch, 32, torch.device("cpu"))
    (v1, _), _, skipped = decode_views(batch, 32, torch.device("cpu"), skip_corrupt=True)
    assert skipped == [batch.names[0]] and torch.equal(v1[0], v1[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_decode_matches_the_cpu_path(tmp_path):
    """On a GPU: the batch decoded by nvjpeg and cropped on the device is close to the CPU
    path's views (same boxes); a PNG falls back to the CPU decoder."""
    root = jpeg_folder(tmp_path)
    Image.fromarray(photo(96, 128, 9)).save(root / "train" / "a" / "png.png")
    base = build_dataset("imagefolder", str(root), "pretrain", image_size=32)
    enc, cpu = EncodedTwoCropDataset(base, SPEC), TwoCropDataset(base, SPEC)
    keys = [(i, sample_seed(0, 0, i)) for i in range(len(base))]
    batch = enc.collate([enc.load(k)[0] for k in keys])
    (d1, d2), fallbacks, _ = decode_views(batch, 32, torch.device("cuda"))
    assert d1.is_cuda and fallbacks == 1
    r1, r2 = cpu.collate([cpu.load(k)[0] for k in keys])
    for d, r in ((d1, r1), (d2, r2)):
        assert (d.cpu().float() - r.float()).abs().mean() < 4.0
