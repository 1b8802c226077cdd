"""The photometric part of the two views, one image at a time: the loader's half of the
ImageFolder input when the training device is the CPU.

With ``data.crop_from: original`` the loader workers already decode each image and cut both
views' crops (:mod:`sslkit.data.crops`). On a CUDA device the photometric ops (colour jitter,
grayscale, blur, solarize) then run batched on the GPU (:class:`sslkit.augment.TwoViews`). On
a CPU device the main process has one core's worth of threads beside the workers, and the
batched float ops there cost more than the whole per-sample torchvision pipeline in the
workers, so :class:`WorkerPhotometric` applies them in the workers instead, to each cropped
view while it is in the cache, and the main process only normalises
(:meth:`sslkit.augment.TwoViews.normalized`).

Same views as the device chain of the same config:

* the ops compute what the device chain's do, in float32 on the view scaled to [0, 1], in
  the chain's order (jitter, grayscale, blur, solarize): kornia's
  ``adjust_brightness_accumulative``, ``adjust_contrast_with_mean_subtraction`` and
  ``adjust_saturation_with_gray_subtraction`` themselves; the formula of
  :func:`sslkit.augment.adjust_hue_turns` (:func:`hue_turns`, per channel plane); kornia's
  ``rgb_to_grayscale`` with BT.601 weights; the truncated Gaussian kernel of
  ``get_gaussian_kernel1d`` (:func:`gaussian_kernel`) with reflect borders
  (:func:`gaussian_blur`, as matrix products);
  BYOL's solarize at a fixed threshold. They agree with the device ops to float rounding
  (``tests/test_photometric.py``); only the result is rounded to uint8 (half a grey level);
* the parameters follow the distributions of the kornia modules of the same config: each op
  applies with its probability (per view: MoCo-v3's blur 1.0 / 0.1 and solarize 0 / 0.2),
  the jitter factors are uniform on kornia's ranges (``[max(0, 1 - b), 1 + b]``, hue ``[-h,
  h]``), the blur sigma uniform on ``blur_sigma``;
* one difference: kornia draws one random order of the four jitter steps per batch,
  here each view draws its own (torchvision's per-sample ColorJitter); for each image the
  order is uniform over the 24 permutations either way;
* the draws come from a generator seeded by the image's ``(run seed, epoch, index)`` seed
  (:func:`photometric_seed` of :func:`sslkit.data.crops.sample_seed`), like the crop boxes,
  so a run is reproducible and resumable whatever the number of workers.

The flip, applied in the loader before these ops, commutes with all of them (the blur kernel
and its reflect border are symmetric).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import (adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction,
                            adjust_saturation_with_gray_subtraction)

from sslkit.augment import blur_kernel_size
from sslkit.data.info import LUMA

NEUTRAL = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation, hue: the identity factors


def hue_turns(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """:func:`sslkit.augment.adjust_hue_turns` for one image (1, 3, H, W): the same formula,
    computed channel plane by channel plane (one ``remainder`` on the hue plane, then the
    per-channel offsets wrapped by a comparison), equal to it within float rounding.
    ``torch.where`` and ``remainder`` on the whole image cost several times more on one core
    (measured: 0.5 ms for one ``where`` over 150k values at 224 px, 0.04 over 50k)."""
    r, g, b = x[0]
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    div = torch.where(chroma > 0, chroma, 1.0)
    h6 = torch.where(maxc == r, (g - b) / div,
                     torch.where(maxc == g, 2.0 + (b - r) / div, 4.0 + (r - g) / div))
    h6 = torch.remainder(h6 + 6.0 * float(factor), 6.0)
    out = torch.empty_like(x)
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = h6 + n
        k = torch.where(k >= 6.0, k - 6.0, k)
        torch.sub(maxc, chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0), out=out[0, c])
    return out


JITTER_STEPS = (adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction,
                adjust_saturation_with_gray_subtraction, hue_turns)
UNIFORMS = 9  # per view: jitter gate, 4 factors, grayscale gate, blur gate, sigma, solarize gate


@dataclass(frozen=True)
class PhotometricSpec:
    """The photometric parameters of a two-view config, as the device chain uses them."""

    size: int
    channels: int
    jitter_p: float
    ranges: tuple[tuple[float, float], ...]  # brightness, contrast, saturation, hue factors
    grayscale_p: float
    blur_p: tuple[float, float]  # view 1, view 2
    blur_sigma: tuple[float, float]
    blur_kernel: int
    solarize_p: tuple[float, float]
    solarize_threshold: float

    @classmethod
    def from_params(cls, p: dict[str, Any], size: int, channels: int) -> "PhotometricSpec":
        """From :func:`sslkit.augment.resolve_params`'s dict, as ``_view_chain`` reads it:
        one channel has no saturation, hue or grayscale; a zero jitter is no jitter."""
        rgb = channels == 3
        b, c = float(p["brightness"]), float(p["contrast"])
        s, h = (float(p["saturation"]), float(p["hue"])) if rgb else (0.0, 0.0)
        ranges = ((max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s),
                  (max(-0.5, -h), h))
        jitter_p = float(p["jitter_p"]) if any((b, c, s, h)) else 0.0
        return cls(int(size), int(channels), jitter_p, ranges,
                   float(p["grayscale_p"]) if rgb else 0.0, tuple(p["blur_p"]),
                   tuple(p["blur_sigma"]), blur_kernel_size(size), tuple(p["solarize_p"]),
                   float(p["solarize_threshold"]))


@dataclass(frozen=True)
class ViewDraw:
    """One view's photometric parameters; None / False: the op does not apply."""

    jitter: Optional[tuple[float, float, float, float]] = None  # b, c, s, h factors
    order: tuple[int, ...] = (0, 1, 2, 3)
    gray: bool = False
    sigma: Optional[float] = None
    solarize: bool = False

    def is_identity(self) -> bool:
        return self.jitter is None and not self.gray and self.sigma is None and not self.solarize


def photometric_seed(seed: int) -> int:
    """The seed of an image's photometric draws, from its crop seed (a separate stream: the
    crop boxes stay torchvision's draws)."""
    return (int(seed) * 0xD6E8FEB86659FD93 + 0x632BE59BD9B4E019) % (2 ** 63)


def draw_photometric(spec: PhotometricSpec, seed: int) -> tuple[ViewDraw, ViewDraw]:
    """Both views' parameters for the image whose crop seed is ``seed``: per view
    :data:`UNIFORMS` uniforms, then a random order of the jitter steps, always drawn (a fixed
    number of draws per view); an op applies when its uniform is below its probability."""
    g = torch.Generator().manual_seed(photometric_seed(seed))
    out = []
    for v in (0, 1):
        u = torch.rand(UNIFORMS, generator=g, dtype=torch.float64).tolist()
        order = tuple(torch.randperm(4, generator=g).tolist())
        factors = tuple(lo + (hi - lo) * x for (lo, hi), x in zip(spec.ranges, u[1:5]))
        lo, hi = spec.blur_sigma
        out.append(ViewDraw(
            jitter=factors if u[0] < spec.jitter_p else None, order=order,
            gray=u[5] < spec.grayscale_p,
            sigma=lo + (hi - lo) * u[7] if u[6] < spec.blur_p[v] else None,
            solarize=u[8] < spec.solarize_p[v]))
    return out[0], out[1]


@functools.lru_cache(maxsize=16)
def _band_index(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source line, output line, tap) of every weight of :func:`_reflect_band`."""
    r = k // 2
    out_idx = torch.arange(n).view(n, 1).expand(n, k)
    src = (out_idx + torch.arange(k).view(1, k) - r).abs()
    src = torch.where(src >= n, 2 * (n - 1) - src, src)
    return src.reshape(-1), out_idx.reshape(-1), torch.arange(k).repeat(n)


def _reflect_band(n: int, kernel: torch.Tensor) -> torch.Tensor:
    """(n, n) matrix M with ``(x @ M)[o] = sum_j kernel[j] x[reflect(o + j - r)]``: the
    correlation with ``kernel`` (odd length 2r + 1 <= 2n - 1) over a reflect-padded line, as
    ``F.pad(mode="reflect")`` + conv computes it. Column o is zero outside rows o - r .. o + r
    (a reflected index stays within r of o)."""
    src, out_idx, tap = _band_index(n, kernel.numel())
    band = torch.zeros(n, n, dtype=kernel.dtype)
    return band.index_put_((src, out_idx), kernel[tap], accumulate=True)


def gaussian_kernel(kernel_size: int, sigma: float) -> torch.Tensor:
    """kornia's ``get_gaussian_kernel1d(kernel_size, sigma)`` for an odd size, float32:
    ``exp(-x^2 / (2 sigma^2))`` on ``x = -r .. r``, normalised to sum 1 (the same float32
    operations, without its checks: they cost more than the blur at 96 px)."""
    x = torch.arange(kernel_size, dtype=torch.float32) - float(kernel_size // 2)
    gauss = torch.exp(-x.pow(2.0) / (2 * torch.tensor(float(sigma)).pow(2.0)))
    return gauss / gauss.sum()


BLUR_BLOCK = 32  # output lines per matrix product


def _correlate(x: torch.Tensor, band: torch.Tensor, r: int, rows: bool) -> torch.Tensor:
    """``x @ band`` along W (``rows=False``) or ``band.T @ x`` along H, BLUR_BLOCK output
    lines at a time over the 2r + BLUR_BLOCK input lines they read (one product for a short
    side)."""
    n = band.shape[0]
    if n <= 4 * BLUR_BLOCK:
        return band.t() @ x if rows else x @ band
    out = torch.empty_like(x)
    for s in range(0, n, BLUR_BLOCK):
        lo, hi = max(0, s - r), min(n, s + BLUR_BLOCK + r)
        if rows:
            out[..., s:s + BLUR_BLOCK, :] = band[lo:hi, s:s + BLUR_BLOCK].t() @ x[..., lo:hi, :]
        else:
            out[..., s:s + BLUR_BLOCK] = x[..., lo:hi] @ band[lo:hi, s:s + BLUR_BLOCK]
    return out


def gaussian_blur(x: torch.Tensor, sigma: float, kernel_size: int) -> torch.Tensor:
    """``kornia.filters.gaussian_blur2d(x, k, (sigma, sigma), "reflect")`` for (..., H, W):
    the same kernel along W then H, each pass as matrix products with the reflect band
    (:func:`_correlate`). On one core the fastest exact blur of one image we measured: 0.7
    ms at 224 px, against 1.4 for one product with the whole band and 3.6 for two depthwise
    convolutions."""
    kernel = gaussian_kernel(kernel_size, sigma).to(x.dtype)
    r = kernel_size // 2
    h, w = x.shape[-2:]
    band = _reflect_band(w, kernel)
    x = _correlate(x, band, r, rows=False)
    return _correlate(x, band if h == w else _reflect_band(h, kernel), r, rows=True)


def apply_view(x: torch.Tensor, d: ViewDraw, spec: PhotometricSpec) -> torch.Tensor:
    """The photometric ops of ``d`` on ``x`` (1, C, H, W) float in [0, 1], in the device
    chain's order: jitter (its steps in ``d.order``, each skipped at its neutral factor,
    clamped to [0, 1] before and after), grayscale, blur, solarize."""
    if d.jitter is not None:
        x = x.clamp(0.0, 1.0)
        for idx in d.order:
            if d.jitter[idx] != NEUTRAL[idx]:
                x = JITTER_STEPS[idx](x, torch.tensor([d.jitter[idx]], dtype=x.dtype))
        x = x.clamp(0.0, 1.0)
    if d.gray and x.shape[-3] == 3:
        x = rgb_to_grayscale(x, rgb_weights=torch.tensor(LUMA, dtype=x.dtype)).repeat(1, 3, 1, 1)
    if d.sigma is not None:
        x = gaussian_blur(x, d.sigma, spec.blur_kernel)
    if d.solarize:  # per channel plane: see hue_turns
        t = spec.solarize_threshold
        x = torch.stack([torch.where(c >= t, 1.0 - c, c) for c in x.unbind(-3)], -3)
    return x


def apply_view_uint8(view: torch.Tensor, d: ViewDraw, spec: PhotometricSpec) -> torch.Tensor:
    """:func:`apply_view` on a uint8 (C, H, W) view; the result rounded back to uint8."""
    if d.is_identity():
        return view
    x = apply_view(view.unsqueeze(0).float().div_(255.0), d, spec)[0]
    return x.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)


class WorkerPhotometric:
    """``(view1, view2) uint8, crop seed -> (view1, view2) uint8`` with the photometric part
    of the config's two views applied (see the module docstring); picklable, for the loader
    workers. ``spec``: a :class:`PhotometricSpec`."""

    def __init__(self, spec: PhotometricSpec):
        self.spec = spec

    @classmethod
    def from_views(cls, views: Any) -> "WorkerPhotometric":
        """From a :class:`sslkit.augment.TwoViews`."""
        return cls(PhotometricSpec.from_params(views.params, views.image_size, views.channels))

    def __call__(self, pair: tuple[torch.Tensor, torch.Tensor], seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        d1, d2 = draw_photometric(self.spec, seed)
        return apply_view_uint8(pair[0], d1, self.spec), apply_view_uint8(pair[1], d2, self.spec)

    def __repr__(self) -> str:
        return f"WorkerPhotometric({self.spec})"
