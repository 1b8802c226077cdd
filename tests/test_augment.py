"""Two-view augmentation: parameters, statistics over many samples, reproducibility."""
from __future__ import annotations

import pytest
import torch

from sslkit import config as config_mod
from sslkit.views.grid import augmentation_grid
from sslkit.augment import (CenterView, RandomSolarize, blur_kernel_size,
                            build_views, resolve_params, views_from_config)
from sslkit.errors import ConfigError
from sslkit.methods import resolved

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # views in [0, 1] units
IDENTITY_CROP = dict(crop_scale=[1.0, 1.0], crop_ratio=[1.0, 1.0])
NO_COLOUR = dict(jitter_p=0.0, grayscale_p=0.0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def ramp(n: int, size: int) -> torch.Tensor:
    """(n, 3, S, S) float: every channel = column index / (S-1); left-right asymmetric."""
    x = torch.linspace(0, 1, size).view(1, 1, 1, size)
    return x.expand(n, 3, size, size).contiguous()


def test_preset_parameters_match_the_papers():
    v2 = resolve_params("mocov2")  # MoCo-v2 aug+
    assert v2["crop_scale"] == (0.2, 1.0) and v2["crop_ratio"] == pytest.approx((3 / 4, 4 / 3))
    assert (v2["brightness"], v2["contrast"], v2["saturation"], v2["hue"]) == (0.4, 0.4, 0.4, 0.1)
    assert v2["jitter_p"] == 0.8 and v2["grayscale_p"] == 0.2 and v2["flip_p"] == 0.5
    assert v2["blur_p"] == (0.5, 0.5) and v2["blur_sigma"] == (0.1, 2.0)
    assert v2["solarize_p"] == (0.0, 0.0)
    v3 = resolve_params("mocov3")  # BYOL-style asymmetric pair
    assert v3["crop_scale"] == (0.08, 1.0)
    assert (v3["brightness"], v3["contrast"], v3["saturation"], v3["hue"]) == (0.4, 0.4, 0.2, 0.1)
    assert v3["blur_p"] == (1.0, 0.1) and v3["solarize_p"] == (0.0, 0.2)
    assert v3["solarize_threshold"] == 0.5
    for small in ("mocov2_small", "mocov3_small"):
        assert resolve_params(small)["blur_p"] == (0.0, 0.0)
    assert [blur_kernel_size(s) for s in (224, 96, 32)] == [23, 9, 3]


def test_overrides():
    p = resolve_params("mocov2", flip_p=0.0, blur_p=[1.0, 0.0], solarize_p=0.3, hue=None)
    assert p["flip_p"] == 0.0 and p["blur_p"] == (1.0, 0.0) and p["solarize_p"] == (0.3, 0.3)
    assert p["hue"] == 0.1  # None keeps the preset's value
    with pytest.raises(ConfigError, match="unknown augmentation option 'flip_prob'"):
        build_views("mocov2", 32, flip_prob=0.3)
    with pytest.raises(ConfigError, match="unknown augmentation preset"):
        build_views("simclr", 32)
    with pytest.raises(ConfigError):
        resolve_params("mocov2", blur_p=[0.1, 0.2, 0.3])


def test_output_dtype_range_shape_device():
    x = (torch.rand(6, 3, 40, 40) * 255).to(torch.uint8)
    v1, v2 = build_views("mocov3", 24, **RAW)(x)
    for v in (v1, v2):
        assert v.shape == (6, 3, 24, 24) and v.dtype == torch.float32 and v.device == x.device
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    # float input in [0, 1] gives the same views as the uint8 input under the same seed
    views = build_views("mocov2_small", 32, **RAW)
    torch.manual_seed(1)
    a = views(x)
    torch.manual_seed(1)
    b = views(x.float() / 255)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)


def test_normalisation_is_exact_on_identity_views():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    views = build_views("mocov2", 16, mean, std, flip_p=0.0, blur_p=0.0, **IDENTITY_CROP, **NO_COLOUR)
    x = torch.rand(4, 3, 16, 16)
    v1, v2 = views(x)
    expect = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(v1, expect, atol=1e-5) and torch.allclose(v2, expect, atol=1e-5)


def test_flip_rate_is_one_half():
    n = 2000
    x = ramp(n, 32)
    v1, v2 = build_views("mocov2", 32, **RAW)(x)  # full aug+: jitter/blur keep the ramp's order
    for v in (v1, v2):
        flipped = (v[:, 0, 16, 0] > v[:, 0, 16, -1]).float().mean().item()
        assert abs(flipped - 0.5) < 0.05, flipped


def test_grayscale_rate_is_one_fifth():
    n = 2000
    x = torch.tensor([0.8, 0.3, 0.1]).view(1, 3, 1, 1).expand(n, 3, 16, 16).contiguous()
    v1, v2 = build_views("mocov2_small", 16, **RAW)(x)  # jitter on: colours stay colours
    for v in (v1, v2):
        gray = ((v.amax(1) - v.amin(1)).amax((1, 2)) < 1e-4).float().mean().item()
        assert abs(gray - 0.2) < 0.04, gray


@pytest.mark.parametrize("preset,scale", [("mocov2", (0.2, 1.0)), ("mocov3", (0.08, 1.0))])
def test_crop_scale_and_ratio_within_range(preset, scale):
    n, side = 1500, 64
    col = torch.arange(side, dtype=torch.float32).view(1, 1, 1, side).expand(n, 1, side, side)
    row = torch.arange(side, dtype=torch.float32).view(1, 1, side, 1).expand(n, 1, side, side)
    x = torch.cat([col, row, torch.zeros(n, 1, side, side)], 1) / (side - 1)
    views = build_views(preset, side, **RAW, flip_p=0.0, blur_p=0.0, solarize_p=0.0, **NO_COLOUR)
    v1, _ = views(x)
    # bilinear sampling of a linear ramp is exact: the corner pixels give the crop box
    w = (v1[:, 0, 0, -1] - v1[:, 0, 0, 0]) * (side - 1) + 1
    h = (v1[:, 1, -1, 0] - v1[:, 1, 0, 0]) * (side - 1) + 1
    area = w * h / side ** 2
    ratio = w / h
    slack = 2.5 / side  # integer rounding of the box sides
    assert float(area.min()) >= scale[0] - slack and float(area.max()) <= scale[1] + 1e-4
    assert float(area.min()) < scale[0] + 0.1 and float(area.max()) > 0.9  # the range is used
    assert float(ratio.min()) >= 3 / 4 - 0.1 and float(ratio.max()) <= 4 / 3 + 0.1


def test_crop_modes_agree():
    """CPU uses kornia's per-image crop, other devices its batched warp: same draws, same output."""
    from sslkit.augment import RandomResizedCrop

    crop = RandomResizedCrop(24, (0.08, 1.0), (3 / 4, 4 / 3))
    x = torch.rand(32, 3, 40, 40)
    torch.manual_seed(3)
    a = crop.per_image(x)
    torch.manual_seed(3)
    b = crop.batched(x)
    torch.manual_seed(3)
    assert torch.equal(crop(x), a)
    assert torch.allclose(a, b, atol=1e-4)


def test_solarize_fixed_threshold():
    x = torch.tensor([0.0, 0.3, 0.49, 0.5, 0.51, 0.9, 1.0]).view(1, 1, 1, 7)
    out = RandomSolarize(threshold=0.5, p=1.0)(x)
    expect = torch.tensor([0.0, 0.3, 0.49, 0.5, 0.49, 0.1, 0.0]).view(1, 1, 1, 7)
    assert torch.allclose(out, expect)
    assert torch.equal(RandomSolarize(0.5, p=0.0)(x), x)


def test_mocov3_asymmetric_blur_and_solarize():
    n = 2000
    pinned = dict(**RAW, **IDENTITY_CROP, **NO_COLOUR, flip_p=0.0, blur_sigma=[2.0, 2.0])
    views = build_views("mocov3", 32, **pinned)
    # below the threshold: solarize changes nothing, a strong blur always changes a checkerboard
    checker = ((torch.arange(32).view(32, 1) + torch.arange(32).view(1, 32)) % 2).float()
    x = (0.2 + 0.2 * checker).expand(n, 3, 32, 32).contiguous()
    v1, v2 = views(x)
    blurred = lambda v: ((v - x).abs().amax((1, 2, 3)) > 0.05).float().mean().item()  # noqa: E731
    assert blurred(v1) == 1.0
    assert abs(blurred(v2) - 0.1) < 0.03
    # a constant 0.8 image: blur keeps it, solarize maps it to 0.2 -- on view 2 only
    c = torch.full((n, 3, 32, 32), 0.8)
    v1, v2 = views(c)
    assert torch.allclose(v1, c, atol=1e-5)
    solarized = (v2[:, 0, 0, 0] - 0.2).abs() < 1e-5
    assert abs(solarized.float().mean().item() - 0.2) < 0.04
    assert torch.allclose(v2[~solarized], c[~solarized], atol=1e-5)


def test_seeded_reproducibility():
    x = (torch.rand(8, 3, 32, 32) * 255).to(torch.uint8)
    views = build_views("mocov3", 32)
    torch.manual_seed(123)
    a1, a2 = views(x)
    torch.manual_seed(123)
    b1, b2 = build_views("mocov3", 32)(x)  # a new module, same seed
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    c1, _ = views(x)
    assert not torch.equal(a1, c1)
    assert not torch.equal(a1, a2)


def test_one_channel_input():
    x = (torch.rand(64, 1, 28, 28) * 255).to(torch.uint8)
    views = build_views("mocov2_small", 32, mean=(0.2860,), std=(0.3530,))
    assert views.channels == 1
    v1, v2 = views(x)
    assert v1.shape == (64, 1, 32, 32) and v2.shape == (64, 1, 32, 32)
    # brightness/contrast are kept: without crop and flip, ~80 % of images still change
    fixed = build_views("mocov2_small", 28, channels=1, mean=(0.0,), std=(1.0,), flip_p=0.0,
                        **IDENTITY_CROP)
    v1, _ = fixed(x)
    changed = ((v1 - x.float() / 255).abs().amax((1, 2, 3)) > 1e-3).float().mean().item()
    assert 0.6 < changed < 0.97
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        fixed(torch.rand(2, 3, 28, 28))


def test_color_jitter_uses_torchvision_formulas():
    """Our pinned ColorJitter equals torchvision's functions at fixed factors; in particular
    hue is in turns of the colour wheel, as torchvision's."""
    import torchvision.transforms.v2.functional as TF

    from sslkit.augment import ColorJitter

    x = torch.rand(4, 3, 12, 12)
    for kw, ref in ((dict(hue=(0.1, 0.1)), lambda t: TF.adjust_hue(t, 0.1)),
                    (dict(hue=(-0.45, -0.45)), lambda t: TF.adjust_hue(t, -0.45)),
                    (dict(saturation=(1.3, 1.3)), lambda t: TF.adjust_saturation(t, 1.3)),
                    (dict(brightness=(0.7, 0.7)), lambda t: TF.adjust_brightness(t, 0.7)),
                    (dict(contrast=(1.3, 1.3)), lambda t: TF.adjust_contrast(t, 1.3))):
        out = ColorJitter(**kw, p=1.0)(x)
        expect = torch.stack([ref(t) for t in x])
        assert torch.allclose(out, expect, atol=1e-4), kw


def test_fast_hue_equals_torchvision():
    import torchvision.transforms.v2.functional as TF

    from sslkit.augment import adjust_hue_turns

    x = torch.rand(6, 3, 9, 9)
    x[0] = 0.5  # gray: hue undefined, unchanged
    x[1, :, :3] = 0.0  # black pixels
    x[2, 1] = x[2, 0]  # ties between the maximal channels
    x[3, 2] = 1.0
    f = torch.tensor([0.3, -0.2, 0.5, -0.5, 0.05, 0.0])
    out = adjust_hue_turns(x, f)
    expect = torch.stack([TF.adjust_hue(x[i], float(f[i])) for i in range(6)])
    assert torch.allclose(out, expect, atol=1e-5)


def test_views_from_config():
    cfg = config_mod.build({"data": {"name": "fashion_mnist", "channels": 1, "image_size": 28},
                            "augment": {"flip_p": 0.0, "solarize_p": [0.0, 0.5]},
                            "method": {"name": "mocov3"}})
    with pytest.raises(ConfigError, match="resolve the config first"):
        views_from_config(cfg)  # augment.preset: auto is the method's, known once resolved
    views = views_from_config(resolved(cfg))
    assert views.preset == "mocov3_small" and views.channels == 1 and views.image_size == 28
    assert views.params["flip_p"] == 0.0 and views.params["solarize_p"] == (0.0, 0.5)
    assert views.mean.flatten().tolist() == pytest.approx([0.2860])
    v1, v2 = views(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert v1.shape == (2, 1, 28, 28)


def test_augmentation_grid():
    torch.manual_seed(0)
    rows = [torch.rand(4, 3, 16, 16) for _ in range(3)]
    grid = augmentation_grid(*rows, min_side=16)
    assert grid.dtype == torch.float32 and grid.shape[0] == 3
    assert float(grid.min()) >= 0 and float(grid.max()) <= 1
    margin = grid.shape[2] - (4 * 18 + 2)  # the label column on the left
    assert margin > 0 and grid.shape[1] == 3 * 18 + 2
    assert torch.equal(grid[:, 2:18, margin + 2:margin + 18], rows[0][0])  # first original
    assert torch.equal(grid[:, 20:36, margin + 2:margin + 18], rows[1][0])  # its view 1
    assert (grid[:, :, :margin] < 0.5).any()  # the labels are drawn
    small = augmentation_grid(*[torch.zeros(2, 1, 28, 28)] * 3, min_side=96)
    assert small.shape[0] == 3 and small.shape[1] == 3 * (4 * 28 + 2) + 2  # upscaled x4


@pytest.mark.parametrize("side", [28, 224])
def test_augmentation_grid_labels_are_large_enough_for_a_thumbnail(side):
    """The row labels are about a fifth of a row high (the default font's 9-px letters are
    unreadable once TensorBoard shrinks an 8-image grid to a thumbnail)."""
    rows = [torch.ones(8, 3, side, side)] * 3
    grid = augmentation_grid(*rows)
    size = max(side, 96 // side * side + (side if 96 % side else 0))  # after the upscale
    margin = grid.shape[2] - (8 * (size + 2) + 2)
    ink = (grid[0, : size + 2, :margin] < 0.5).any(dim=1).nonzero().flatten()  # "original"
    assert len(ink) and int(ink.max() - ink.min()) + 1 >= size / 6, (int(ink.max() - ink.min()), size)


def test_center_view():
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8) / 63
    half = CenterView(4, 1, (0.0,), (1.0,), crop_fraction=0.5)(x)
    assert torch.equal(half, x[..., 2:6, 2:6])
    same = CenterView(8, 1, (0.5,), (0.5,))(x)
    assert torch.allclose(same, (x - 0.5) / 0.5)
    from sslkit.augment import eval_transform_from_config

    cfg = config_mod.build({"data": {"name": "imagefolder", "image_size": 224}})
    tf = eval_transform_from_config(cfg)  # load_size 256: Resize(256) + CenterCrop(224)
    big = torch.rand(1, 3, 256, 256)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(tf(big), (big[..., 16:240, 16:240] - mean) / std, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_same_code_path():
    x = (torch.rand(32, 3, 32, 32) * 255).to(torch.uint8)
    views = build_views("mocov3", 32)
    torch.manual_seed(5)
    c1, c2 = views(x)
    torch.manual_seed(5)
    g1, g2 = views.to("cuda")(x.to("cuda"))  # parameters are drawn on the CPU: same draws
    assert g1.device.type == "cuda" and g1.shape == c1.shape
    assert torch.allclose(g1.cpu(), c1, atol=1e-3) and torch.allclose(g2.cpu(), c2, atol=1e-3)
