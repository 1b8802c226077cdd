"""The photometric part of the views applied in the loader (sslkit.views.photometric), for a CPU
training device: the same ops as the device chain (forced parameters), the same parameter
distributions, per-image seeding, and the pipeline's choice of path."""
from __future__ import annotations

import itertools

import kornia.augmentation as K
import pytest
import torch

from sslkit import config
from sslkit.augment import ColorJitter, RandomSolarize, build_views, to_unit_float
from sslkit.data import TrainSampler, build_dataset, build_loader
from sslkit.methods import resolved
from sslkit.data.crops import CropSpec, SeededSampler, TwoCropDataset, decode_two_views
from sslkit.views.photometric import (ViewDraw, WorkerPhotometric, apply_view,
                                apply_view_uint8, draw_photometric, gaussian_blur,
                                gaussian_kernel)
from sslkit.views.pipeline import build_pretrain_input, photometric_in_loader
from test_crops import jpeg_folder

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def chain_module(views, view: int, kind: type):
    chain = views.photometric1 if view == 0 else views.photometric2
    found = [m for m in chain if isinstance(m, kind)]
    return found[0] if found else None


def images(n: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Smooth colour pictures with texture and saturated areas, in [0, 1], quantised to
    uint8 levels (what the loader's crops hold)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                        align_corners=False)
    x = (0.8 * x + 0.2 * torch.rand(n, channels, size, size, generator=g)).clamp(0, 1)
    return (x * 255).round() / 255


# --------------------------------------------------------------------------- the parameters
@pytest.mark.parametrize("preset, channels", [("mocov2", 3), ("mocov3", 3), ("mocov3", 1),
                                              ("mocov2_small", 3)])
def test_spec_is_the_device_chains(preset, channels):
    """Probabilities, factor ranges, sigma range, kernel and threshold are those of the
    kornia modules that the same config builds for the device."""
    size = 96
    views = build_views(preset, size, channels=channels, mean=(0.5,) * channels,
                        std=(0.25,) * channels, hue=0.2)
    spec = WorkerPhotometric.from_views(views).spec
    cj = chain_module(views, 0, ColorJitter)
    gen = cj._param_generator
    gen.make_samplers(torch.device("cpu"), torch.float32)
    samplers = (gen.brightness_sampler, gen.contrast_sampler, gen.saturation_sampler,
                gen.hue_sampler)
    for (lo, hi), sampler in zip(spec.ranges, samplers):
        assert (lo, hi) == pytest.approx((float(sampler.low), float(sampler.high)), abs=1e-6)
    assert spec.jitter_p == cj.p == 0.8
    gray = chain_module(views, 0, K.RandomGrayscale)
    assert spec.grayscale_p == (gray.p if gray is not None else 0.0)
    assert spec.grayscale_p == (0.2 if channels == 3 else 0.0)
    if channels == 1:  # saturation, hue and grayscale need RGB
        assert spec.ranges[2] == (1.0, 1.0) and spec.ranges[3] == (0.0, 0.0)
    else:
        assert spec.ranges[3] == pytest.approx((-0.2, 0.2))
    for v in (0, 1):
        blur = chain_module(views, v, K.RandomGaussianBlur)
        assert spec.blur_p[v] == (blur.p if blur is not None else 0.0)
        if blur is not None:
            assert blur.flags["kernel_size"] == (spec.blur_kernel, spec.blur_kernel)
            gen = blur._param_generator
            gen.make_samplers(torch.device("cpu"), torch.float32)
            assert spec.blur_sigma == pytest.approx((float(gen.sigma_sampler.low),
                                                     float(gen.sigma_sampler.high)))
        sol = chain_module(views, v, RandomSolarize)
        assert spec.solarize_p[v] == (sol.p if sol is not None else 0.0)
        if sol is not None:
            assert spec.solarize_threshold == sol.threshold
    if preset == "mocov3":  # the BYOL asymmetry stays per view
        assert spec.blur_p == (1.0, 0.1) and spec.solarize_p == (0.0, 0.2)


def test_draw_rates_and_ranges():
    """Over many images: each op applies with its configured probability (exactly 0 or 1
    where configured so), the factors and sigma are uniform on their ranges, all 24 jitter
    orders occur about equally often, and the two views draw independently."""
    spec = WorkerPhotometric.from_views(build_views("mocov3", 96)).spec
    n = 6000
    draws = [draw_photometric(spec, seed) for seed in range(n)]
    for v, (blur_p, sol_p) in enumerate(zip(spec.blur_p, spec.solarize_p)):
        d = [pair[v] for pair in draws]
        rate = lambda hits: sum(hits) / n  # noqa: E731
        assert abs(rate(x.jitter is not None for x in d) - 0.8) < 0.02
        assert abs(rate(x.gray for x in d) - 0.2) < 0.02
        assert abs(rate(x.sigma is not None for x in d) - blur_p) < 0.015
        assert abs(rate(x.solarize for x in d) - sol_p) < 0.015
        factors = torch.tensor([x.jitter for x in d if x.jitter is not None])
        for (lo, hi), col in zip(spec.ranges, factors.unbind(1)):
            assert lo <= float(col.min()) < lo + 0.01 * (hi - lo) + 1e-9
            assert hi - 0.01 * (hi - lo) - 1e-9 < float(col.max()) <= hi
            assert abs(float(col.mean()) - (lo + hi) / 2) < 0.02 * (hi - lo) + 1e-9
        sigma = torch.tensor([x.sigma for x in d if x.sigma is not None])
        assert 0.1 <= float(sigma.min()) and float(sigma.max()) <= 2.0
        assert abs(float(sigma.mean()) - 1.05) < 0.05 * (1 if blur_p == 1 else 3)
        orders = [x.order for x in d]
        assert set(orders) == set(itertools.permutations(range(4)))
        assert max(orders.count(o) for o in set(orders)) / n < 1 / 24 + 0.012
    assert blur_p == 0.1 and sol_p == 0.2  # the loop ended on view 2
    assert all(pair[0].sigma is not None and not pair[0].solarize for pair in draws)
    # independent views: gates multiply, factors differ
    both = [(a, b) for a, b in draws if a.jitter is not None and b.jitter is not None]
    assert abs(len(both) / n - 0.64) < 0.025
    assert not any(a.jitter == b.jitter for a, b in both)


def test_draws_are_seeded():
    spec = WorkerPhotometric.from_views(build_views("mocov2", 32)).spec
    assert draw_photometric(spec, 7) == draw_photometric(spec, 7)
    assert draw_photometric(spec, 7) != draw_photometric(spec, 8)


# --------------------------------------------------------------------------- the ops
def _jitter_params(n: int, factors, order) -> dict:
    keys = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
    p = {k: torch.full((n,), f) for k, f in zip(keys, factors)}
    return dict(p, order=torch.tensor(order), batch_prob=torch.ones(n))


@pytest.mark.parametrize("channels", [3, 1])
def test_jitter_is_the_device_colorjitter(channels):
    """Forced factors and order: the loader's jitter gives the device ColorJitter's output
    (the same float32 functions); rounded to uint8, within one grey level of it."""
    views = build_views("mocov2", 40, channels=channels, mean=(0.0,) * channels,
                        std=(1.0,) * channels)
    spec = WorkerPhotometric.from_views(views).spec
    cj = chain_module(views, 0, ColorJitter)
    x = images(4, 40, channels)
    g = torch.Generator().manual_seed(1)
    for trial in range(12):
        u = torch.rand(4, generator=g).tolist()
        factors = tuple(lo + (hi - lo) * t for (lo, hi), t in zip(spec.ranges, u))
        order = tuple(torch.randperm(4, generator=g).tolist())
        device = cj(x, params=_jitter_params(4, factors, order))
        d = ViewDraw(jitter=factors, order=order)
        worker = torch.cat([apply_view(x[i:i + 1], d, spec) for i in range(4)])
        assert torch.allclose(worker, device, atol=1e-6), trial
        as_uint8 = torch.stack([apply_view_uint8((x[i] * 255).round().to(torch.uint8), d, spec)
                                for i in range(4)])
        assert ((as_uint8.float() - device * 255).abs() <= 0.5 + 1e-3).all()


def test_grayscale_blur_solarize_are_the_device_ops():
    views = build_views("mocov3", 96, **RAW)
    spec = WorkerPhotometric.from_views(views).spec
    x = images(3, 96)
    ones = torch.ones(3)
    gray = chain_module(views, 0, K.RandomGrayscale)(x, params={"batch_prob": ones})
    d = ViewDraw(gray=True)
    assert torch.allclose(torch.cat([apply_view(x[i:i + 1], d, spec) for i in range(3)]),
                          gray, atol=1e-6)
    blur = chain_module(views, 0, K.RandomGaussianBlur)
    for sigma in (0.1, 0.7, 2.0):
        device = blur(x, params={"sigma": torch.full((3,), sigma), "batch_prob": ones})
        worker = torch.cat([apply_view(x[i:i + 1], ViewDraw(sigma=sigma), spec)
                            for i in range(3)])
        assert torch.allclose(worker, device, atol=1e-6), sigma
    solarized = RandomSolarize(spec.solarize_threshold, p=1.0)(x)
    worker = torch.cat([apply_view(x[i:i + 1], ViewDraw(solarize=True), spec) for i in range(3)])
    assert torch.equal(worker, solarized)
    # uint8 in and out: solarize is exact (x >= 128 -> 255 - x)
    u8 = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 1, 256)
    out = apply_view_uint8(u8, ViewDraw(solarize=True), spec)
    assert torch.equal(out, torch.where(u8 >= 128, 255 - u8, u8))


def test_blur_on_a_non_square_image_and_small_kernels():
    """The banded-product blur is kornia's gaussian_blur2d (reflect) on any shape."""
    import kornia.filters as KF

    for shape in ((2, 3, 37, 50), (1, 3, 150, 230)):  # one product; blocks of lines
        x = torch.rand(shape)
        for k, sigma in ((3, 0.5), (9, 2.0), (23, 1.3), (23, 0.1)):
            ref = KF.gaussian_blur2d(x, (k, k), (sigma, sigma), "reflect")
            assert torch.allclose(gaussian_blur(x, sigma, k), ref, atol=1e-6), (shape, k)
            kernel = KF.get_gaussian_kernel1d(k, sigma)[0]
            assert torch.allclose(gaussian_kernel(k, sigma), kernel, rtol=1e-6, atol=0)


def test_whole_view_is_the_device_chain_in_its_order():
    """All ops forced on: jitter, grayscale, blur, solarize, in the device chain's order."""
    views = build_views("mocov3", 64, **RAW)
    spec = WorkerPhotometric.from_views(views).spec
    x = images(2, 64, seed=3)
    d = ViewDraw(jitter=(1.3, 0.7, 1.15, -0.06), order=(3, 1, 0, 2), gray=True, sigma=1.4,
                 solarize=True)
    ones = torch.ones(2)
    y = chain_module(views, 1, ColorJitter)(x, params=_jitter_params(2, d.jitter, d.order))
    y = chain_module(views, 1, K.RandomGrayscale)(y, params={"batch_prob": ones})
    y = chain_module(views, 1, K.RandomGaussianBlur)(
        y, params={"sigma": torch.full((2,), d.sigma), "batch_prob": ones})
    y = RandomSolarize(spec.solarize_threshold, p=1.0)(y)
    worker = torch.cat([apply_view(x[i:i + 1], d, spec) for i in range(2)])
    # the blur's sums differ in the last bits; solarize could turn that into a jump at its
    # threshold for a pixel within 1e-6 of it (none here)
    assert torch.allclose(worker, y, atol=1e-5)
    identity = ViewDraw()
    v = (x[0] * 255).round().to(torch.uint8)
    assert apply_view_uint8(v, identity, spec) is v  # nothing drawn: the crop as cut


# --------------------------------------------------------------------------- in the loader
SPEC = CropSpec(size=32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5)


def test_loader_views_seeded_per_image_whatever_the_workers(tmp_path):
    """With the photometric part in the loader, an image's views depend on (seed, epoch,
    index) only: equal with 0 and 2 workers and for a mid-epoch start; the crop boxes are
    the ones drawn without it."""
    root = jpeg_folder(tmp_path)
    base = build_dataset("imagefolder", str(root), "pretrain", image_size=32)
    photometric = WorkerPhotometric.from_views(build_views("mocov3", 32))
    ds = TwoCropDataset(base, SPEC, photometric)

    def batches(workers: int, start: int = 0):
        sampler = TrainSampler(len(ds), seed=3)
        sampler.set_epoch(1)
        sampler.set_start(start, 2)
        loader = build_loader(ds, 2, train=True, sampler=SeededSampler(sampler, 3),
                              num_workers=workers)
        return [v for v, _ in loader]

    a, b, tail = batches(0), batches(2), batches(0, start=1)
    assert len(a) == 3
    for (a1, a2), (b1, b2) in zip(a, b):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a[1:], tail))
    path = base.samples[0][0]
    plain, boxes = decode_two_views(path, SPEC, 11)
    done, same_boxes = decode_two_views(path, SPEC, 11, photometric=photometric)
    assert torch.equal(boxes, same_boxes)
    expect = photometric(plain, 11)
    assert torch.equal(done[0], expect[0]) and torch.equal(done[1], expect[1])


def _cfg(tmp_path, extra=()):
    root = jpeg_folder(tmp_path / "data")
    return resolved(config.load(None, ["data.name=imagefolder", f"data.root={root}",
                              "data.image_size=32", "data.num_workers=0", "train.batch_size=4",
                              "augment.preset=mocov3", "method.bn_splits=2",
                              f"run.output_dir={tmp_path / 'run'}",
                              *extra]))


def test_pipeline_chooses_the_path_from_the_device(tmp_path):
    cfg = _cfg(tmp_path)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert photometric_in_loader(cfg, cpu) and not photometric_in_loader(cfg, cuda)
    assert not photometric_in_loader(_cfg(tmp_path, ["data.crop_from=square"]), cpu)
    assert not photometric_in_loader(_cfg(tmp_path, ["data.decode_device=cuda"]), cpu)
    synthetic = resolved(config.load(None, ["data.name=synthetic",
                                            f"run.output_dir={tmp_path / 's'}"]))
    assert not photometric_in_loader(synthetic, cpu)
    assert build_pretrain_input(synthetic, cpu, loader=False).photometric is None

    pipe = build_pretrain_input(cfg, cpu)
    assert isinstance(pipe.photometric, WorkerPhotometric) and pipe.dataset.photometric is pipe.photometric
    assert pipe.photometric.spec == WorkerPhotometric.from_views(pipe.views).spec
    (u1, u2), _ = next(iter(pipe.loader))
    v1, v2 = pipe.to_views((u1, u2))
    for u, v in ((u1, v1), (u2, v2)):  # the main process only normalises
        assert v.dtype == torch.float32 and v.shape == (4, 3, 32, 32)
        assert torch.allclose(v, pipe.views.normalize(to_unit_float(u)), atol=1e-5)


def test_normalized_is_normalize_of_unit_float():
    views = build_views("mocov2", 16, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    x = (torch.rand(700, 3, 16, 16) * 255).to(torch.uint8)  # one chunk
    assert torch.allclose(views.normalized(x), views.normalize(to_unit_float(x)), atol=1e-5)
    big = (torch.rand(70, 3, 224, 224) * 255).to(torch.uint8)  # 602 KB per image: chunks
    assert torch.allclose(views.normalized(big), views.normalize(to_unit_float(big)), atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        views.normalized(x[:, :1])
