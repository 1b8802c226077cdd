"""The photometric part of the two views: one table of ops (:data:`OPS`: colour jitter,
grayscale, blur, solarize, in the chain's torchvision order), each with its probability per
view (its gating), its per-image draws, its batched kornia module and its one-image worker
function. Both forms are built from this table and from one :class:`PhotometricSpec` (the
resolved parameters of a config's views):

* the device chain, batched (:func:`device_ops`; :func:`sslkit.augment.build_views` puts the
  crop before and the flip after them): every argument of kornia pinned (kornia's defaults
  differ from torchvision's), each image of the batch drawing its own parameters;
* the loader's worker ops, one view at a time (:class:`WorkerPhotometric`): with
  ``data.crop_from: original`` the loader workers already decode each image and cut both
  views' crops (:mod:`sslkit.data.crops`); on a CPU training device the main process has one
  core's worth of threads beside the workers, and the batched float ops there cost more than
  the whole per-sample torchvision pipeline in the workers, so the workers apply these ops
  too, to each cropped view while it is in the cache, and the main process only normalises
  (:meth:`sslkit.augment.TwoViews.normalized`).

The worker ops compute what the device modules compute, in float32 on the view scaled to
[0, 1]: kornia's ``adjust_brightness_accumulative``, ``adjust_contrast_with_mean_subtraction``
and ``adjust_saturation_with_gray_subtraction`` themselves; the hue formula of
:func:`adjust_hue_turns` (:func:`hue_turns`, per channel plane); kornia's ``rgb_to_grayscale``
with BT.601 weights; the truncated Gaussian kernel of ``get_gaussian_kernel1d``
(:func:`gaussian_kernel`) with reflect borders (:func:`gaussian_blur`, as matrix products);
BYOL's solarize at a fixed threshold. They agree with the device ops to float rounding
(``tests/test_photometric.py``); only the result is rounded to uint8 (half a grey level).
Their parameters follow the distributions of the device modules: each op applies with its
probability (per view: MoCo-v3's blur 1.0 / 0.1 and solarize 0 / 0.2), the jitter factors
are uniform on kornia's ranges (``[max(0, 1 - b), 1 + b]``, hue ``[-h, h]``), the blur sigma
uniform on ``blur_sigma``. One difference: kornia draws one random order of the four jitter
steps per batch, the workers one per view (torchvision's per-sample ColorJitter); for each
image the order is uniform over the 24 permutations either way. The worker draws come from a
generator seeded by the image's ``(run seed, epoch, index)`` seed (:func:`photometric_seed`
of :func:`sslkit.data.crops.sample_seed`), like the crop boxes, so a run is reproducible and
resumable whatever the number of workers. The flip, applied in the loader before these ops,
commutes with all of them (the blur kernel and its reflect border are symmetric).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

import kornia.augmentation as K
import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import (adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction,
                            adjust_saturation_with_gray_subtraction)
from torch import nn

from sslkit.data.info import LUMA

NEUTRAL = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation, hue: the identity factors


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel side of about 10 % of the image (224 -> 23, 96 -> 9, 32 -> 3), at least 3."""
    k = max(3, int(0.1 * image_size))
    return k if k % 2 else k + 1


@dataclass(frozen=True)
class PhotometricSpec:
    """The photometric parameters of a config's two views, gated: an op that does not apply
    has probability 0 (one channel has no saturation, hue or grayscale; a jitter of zero
    factors is no jitter). The only place these rules are written."""

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
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # kornia's b, c, s, h

    @classmethod
    def from_params(cls, p: dict[str, Any], size: int, channels: int) -> "PhotometricSpec":
        """From :func:`sslkit.augment.resolve_params`'s dict (pairs per view as tuples)."""
        rgb = channels == 3
        b, c = float(p["brightness"]), float(p["contrast"])
        s, h = (float(p["saturation"]), float(p["hue"])) if rgb else (0.0, 0.0)
        ranges = ((max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s),
                  (max(-0.5, -h), h))
        jitter_p = float(p["jitter_p"]) if any((b, c, s, h)) else 0.0
        return cls(int(size), int(channels), jitter_p, ranges,
                   float(p["grayscale_p"]) if rgb else 0.0, tuple(p["blur_p"]),
                   tuple(p["blur_sigma"]), blur_kernel_size(size), tuple(p["solarize_p"]),
                   float(p["solarize_threshold"]), (b, c, s, h))


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


# --------------------------------------------------------------------------- kornia modules
def adjust_hue_turns(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` for a batch: rotate each image's hue by ``factor`` turns.

    ``x`` (B, 3, H, W) in [0, 1], ``factor`` (B,). In HSV terms (``V = max``, chroma
    ``X = max - min``, hue in sixths ``h6`` from the maximal channel), the shifted hue
    ``h6' = h6 + 6 factor`` maps back to RGB as ``out_n = V - X clamp(min(k_n, 4 - k_n), 0, 1)``
    with ``k_n = (n + h6') mod 6`` for n = 5, 3, 1 (R, G, B): the closed form of the
    piecewise HSV->RGB that torchvision and kornia evaluate. Same values (to float
    rounding) at about a third of the cost of kornia's RGB->HSV->RGB round trip on CPU.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    div = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h6 = torch.where(maxc == r, (g - b) / div,
                     torch.where(maxc == g, 2.0 + (b - r) / div, 4.0 + (r - g) / div))
    h6 = (h6 + 6.0 * factor.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)).unsqueeze(1)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + h6, 6.0)  # (B, 3, H, W)
    weight = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return maxc.unsqueeze(1) - chroma.unsqueeze(1) * weight


class ColorJitter(K.ColorJitter):
    """kornia's ColorJitter (torchvision's formulas) with the hue step of :func:`adjust_hue_turns`.

    kornia 0.9 routes its random-order hue step through ``_adjust_hue_turns``; on versions
    without that hook the override is unused and kornia's own (equal, slower) hue runs.
    """

    def _adjust_hue_turns(self, input: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        return adjust_hue_turns(input, factor)


class RandomSolarize(nn.Module):
    """BYOL's solarize: with probability ``p`` per image, ``x -> 1 - x`` where ``x >= t``.

    A fixed threshold and no brightness shift (kornia's RandomSolarize draws both at random
    by default). The per-image gate is drawn on the CPU from torch's global RNG, like
    kornia's parameters, so CPU and CUDA runs draw the same gates.
    """

    def __init__(self, threshold: float = 0.5, p: float = 0.2):
        super().__init__()
        self.threshold, self.p = float(threshold), float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1]
        gate = (torch.rand(x.shape[0]) < self.p).to(x.device, non_blocking=True)
        solarized = torch.where(x >= self.threshold, 1.0 - x, x)
        return torch.where(gate.view(-1, 1, 1, 1), solarized, x)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, p={self.p}"


# --------------------------------------------------------------------------- worker functions
def hue_turns(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """:func:`adjust_hue_turns` for one image (1, 3, H, W): the same formula, computed channel
    plane by channel plane (one ``remainder`` on the hue plane, then the per-channel offsets
    wrapped by a comparison), equal to it within float rounding. ``torch.where`` and
    ``remainder`` on the whole image cost several times more on one core (measured: 0.5 ms
    for one ``where`` over 150k values at 224 px, 0.04 over 50k)."""
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


def _jitter(x: torch.Tensor, d: ViewDraw, spec: PhotometricSpec) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    for idx in d.order:  # each step skipped at its neutral factor
        if d.jitter[idx] != NEUTRAL[idx]:
            x = JITTER_STEPS[idx](x, torch.tensor([d.jitter[idx]], dtype=x.dtype))
    return x.clamp(0.0, 1.0)


def _grayscale(x: torch.Tensor, d: ViewDraw, spec: PhotometricSpec) -> torch.Tensor:
    return rgb_to_grayscale(x, rgb_weights=torch.tensor(LUMA, dtype=x.dtype)).repeat(1, 3, 1, 1)


def _solarize(x: torch.Tensor, d: ViewDraw, spec: PhotometricSpec) -> torch.Tensor:
    t = spec.solarize_threshold  # per channel plane: see hue_turns
    return torch.stack([torch.where(c >= t, 1.0 - c, c) for c in x.unbind(-3)], -3)


def _uniform(lo_hi: tuple[float, float], u: float) -> float:
    return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * u


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Op:
    """One photometric op: ``prob(spec, view)`` its probability in a view (0: not in that
    view's chain); ``uniforms`` how many per-image uniforms it draws (its gate first, then
    ``draw(spec, rest)`` makes its parameter, stored in the :class:`ViewDraw` field
    ``field``); ``module(spec, view)`` the batched kornia module; ``apply(x, draw, spec)``
    the same op on one image (1, C, H, W) in [0, 1]."""

    name: str
    field: str
    prob: Callable[[PhotometricSpec, int], float]
    uniforms: int
    draw: Callable[[PhotometricSpec, list[float]], Any]
    module: Callable[[PhotometricSpec, int], nn.Module]
    apply: Callable[[torch.Tensor, ViewDraw, PhotometricSpec], torch.Tensor]


OPS = (
    Op("jitter", "jitter", lambda s, v: s.jitter_p, 5,
       lambda s, u: tuple(_uniform(r, x) for r, x in zip(s.ranges, u)),
       lambda s, v: ColorJitter(brightness=s.jitter[0], contrast=s.jitter[1],
                                saturation=s.jitter[2], hue=s.jitter[3], same_on_batch=False,
                                p=s.jitter_p, keepdim=False, order=None),
       _jitter),
    Op("grayscale", "gray", lambda s, v: s.grayscale_p, 1, lambda s, u: True,
       lambda s, v: K.RandomGrayscale(rgb_weights=torch.tensor(LUMA), same_on_batch=False,
                                      p=s.grayscale_p, keepdim=False),
       _grayscale),
    Op("blur", "sigma", lambda s, v: s.blur_p[v], 2, lambda s, u: _uniform(s.blur_sigma, u[0]),
       lambda s, v: K.RandomGaussianBlur(kernel_size=(s.blur_kernel, s.blur_kernel),
                                         sigma=s.blur_sigma, border_type="reflect",
                                         separable=True, same_on_batch=False, p=s.blur_p[v],
                                         keepdim=False),
       lambda x, d, s: gaussian_blur(x, d.sigma, s.blur_kernel)),
    Op("solarize", "solarize", lambda s, v: s.solarize_p[v], 1, lambda s, u: True,
       lambda s, v: RandomSolarize(threshold=s.solarize_threshold, p=s.solarize_p[v]),
       _solarize),
)
UNIFORMS = sum(op.uniforms for op in OPS)  # per view, before the jitter order


def device_ops(spec: PhotometricSpec, view: int) -> list[nn.Module]:
    """The batched kornia modules of view ``view`` (0 or 1), in the chain's order."""
    return [op.module(spec, view) for op in OPS if op.prob(spec, view) > 0]


# --------------------------------------------------------------------------- worker draws
def photometric_seed(seed: int) -> int:
    """The seed of an image's photometric draws, from its crop seed (a separate stream: the
    crop boxes stay torchvision's draws)."""
    return (int(seed) * 0xD6E8FEB86659FD93 + 0x632BE59BD9B4E019) % (2 ** 63)


def draw_photometric(spec: PhotometricSpec, seed: int) -> tuple[ViewDraw, ViewDraw]:
    """Both views' parameters for the image whose crop seed is ``seed``: per view
    :data:`UNIFORMS` uniforms (each op's gate, then its parameter's), then a random order of
    the jitter steps, always drawn (a fixed number of draws per view); an op applies when its
    gate is below its probability."""
    g = torch.Generator().manual_seed(photometric_seed(seed))
    out = []
    for v in (0, 1):
        u = torch.rand(UNIFORMS, generator=g, dtype=torch.float64).tolist()
        fields: dict[str, Any] = {"order": tuple(torch.randperm(4, generator=g).tolist())}
        at = 0
        for op in OPS:
            if u[at] < op.prob(spec, v):
                fields[op.field] = op.draw(spec, u[at + 1:at + op.uniforms])
            at += op.uniforms
        out.append(ViewDraw(**fields))
    return out[0], out[1]


def apply_view(x: torch.Tensor, d: ViewDraw, spec: PhotometricSpec) -> torch.Tensor:
    """The ops drawn in ``d`` on ``x`` (1, C, H, W) float in [0, 1], in the chain's order
    (grayscale only on 3 channels)."""
    for op in OPS:
        value = getattr(d, op.field)
        if value is not None and value is not False and not (op.name == "grayscale"
                                                             and x.shape[-3] != 3):
            x = op.apply(x, d, spec)
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
        """From a :class:`sslkit.augment.TwoViews` (the spec its device chain was built from)."""
        return cls(views.spec)

    def __call__(self, pair: tuple[torch.Tensor, torch.Tensor], seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        d1, d2 = draw_photometric(self.spec, seed)
        return apply_view_uint8(pair[0], d1, self.spec), apply_view_uint8(pair[1], d2, self.spec)

    def __repr__(self) -> str:
        return f"WorkerPhotometric({self.spec})"


__all__ = ["OPS", "Op", "PhotometricSpec", "ViewDraw", "WorkerPhotometric", "adjust_hue_turns",
           "apply_view", "apply_view_uint8", "blur_kernel_size", "device_ops", "draw_photometric",
           "gaussian_blur", "gaussian_kernel", "hue_turns", "photometric_seed", "ColorJitter",
           "RandomSolarize"]
