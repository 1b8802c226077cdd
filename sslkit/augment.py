"""Two-view augmentation, batched on the training device (kornia).

:func:`build_views` returns an ``nn.Module`` mapping a batch ``(B, C, H, W)`` (uint8, or
float in [0, 1]) to two views ``(B, C, S, S)``, float32, normalised, on the input's device.
Each view is one chain of kornia augmentations with every argument pinned (kornia's defaults
differ from torchvision's); each image of the batch draws its own parameters. Parameters are
drawn by kornia's generators on the CPU from torch's global RNG, so ``torch.manual_seed``
makes the views reproducible, and the same seed gives the same draws on CPU and CUDA.

Chain (torchvision order of the MoCo / BYOL recipes)::

    RandomResizedCrop(S, scale, ratio)            bilinear, corner-aligned (**)
    ColorJitter(b, c, s, h) with prob jitter_p    torchvision's formulas; hue in turns (*)
    RandomGrayscale(grayscale_p)                  BT.601 luma, repeated to 3 channels
    GaussianBlur(k, sigma ~ U(blur_sigma)) p=blur_p   k = odd ~10% of S, reflect border
    Solarize(x >= t -> 1 - x) with prob solarize_p  fixed threshold t, no brightness shift
    RandomHorizontalFlip(flip_p)
    Normalize(mean, std)

Presets (MoCo-v2's "aug+", facebookresearch/moco ``main_moco.py``, and MoCo-v3's BYOL-style
asymmetric pair, facebookresearch/moco-v3 ``main_moco.py``):

=============  ==========  ===================  ======  ==========  =============
preset         crop scale  jitter (b,c,s,h) p   gray p  blur p v1/v2  solarize v1/v2
=============  ==========  ===================  ======  ==========  =============
mocov2         (0.2, 1)    0.4,0.4,0.4,0.1 0.8  0.2     0.5 / 0.5   0 / 0
mocov3         (0.08, 1)   0.4,0.4,0.2,0.1 0.8  0.2     1.0 / 0.1   0 / 0.2
mocov2_small   (0.2, 1)    as mocov2            0.2     0 / 0       0 / 0
mocov3_small   (0.08, 1)   as mocov3            0.2     0 / 0       0 / 0.2
=============  ==========  ===================  ======  ==========  =============

All use ratio (3/4, 4/3), flip p=0.5, blur sigma in [0.1, 2], solarize threshold 0.5. A
method names its presets (``augment.preset: auto`` takes them, :class:`sslkit.methods.MoCoBase`);
:func:`register_preset` adds one. The
``_small`` presets are for 28-32 px data and drop the blur, as the CIFAR recipes do (MoCo's
CIFAR colab: no blur, and RandomResizedCrop(32) at torchvision's default scale (0.08, 1), which
configs/cifar10_mocov2.yaml sets over the preset's aug+ scale; solo-learn's CIFAR MoCo-v3:
scale (0.08, 1), no blur, solarize 0 / 0.2).

The photometric ops between the crop and the flip (and their gating, draws and the loader's
per-view form) come from one table, :data:`sslkit.views.photometric.OPS`.

(*) kornia's ColorJitter, with its hue step replaced by :func:`adjust_hue_turns` (the same
values, about 2.5x faster on CPU; hue is ~70 % of kornia's colour-jitter time).

(**) kornia's per-image "slice" mode on CPU (faster there), its batched "resample" warp on
other devices (see :class:`RandomResizedCrop`); same draws, same output.

Single-channel input (Fashion-MNIST with ``channels=1``): saturation, hue and grayscale need
RGB and are left out; brightness and contrast are kept.

Differences from the per-image torchvision pipeline (the distributions are the same): the
crop is resized bilinearly with corner-aligned sampling and no antialiasing (torchvision:
half-pixel, antialiased resize); ColorJitter draws one random order of its four steps per
batch (torchvision: per image); the blur kernel is truncated at about 10 % of the image side
(MoCo-v2 used PIL's untruncated blur).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from sslkit.config.rules import AUGMENT_KEYS, check_augment, check_normalization
from sslkit.data.info import (IMAGENET_MEAN, IMAGENET_STD, dataset_info, luma_of, normalization,
                              resize_side)
from sslkit.errors import ConfigError
from sslkit.views.photometric import (ColorJitter, PhotometricSpec, RandomSolarize,
                                      adjust_hue_turns, blur_kernel_size, device_ops)

# Keys accepted as overrides: exactly the fields of sslkit.config.AugmentConfig but "preset".
OVERRIDE_KEYS = AUGMENT_KEYS

_BASE = dict(crop_ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter_p=0.8, brightness=0.4,
             contrast=0.4, hue=0.1, grayscale_p=0.2, blur_sigma=(0.1, 2.0),
             solarize_threshold=0.5)
PRESETS: dict[str, dict[str, Any]] = {
    "mocov2": dict(_BASE, crop_scale=(0.2, 1.0), saturation=0.4, blur_p=(0.5, 0.5),
                   solarize_p=(0.0, 0.0)),
    "mocov3": dict(_BASE, crop_scale=(0.08, 1.0), saturation=0.2, blur_p=(1.0, 0.1),
                   solarize_p=(0.0, 0.2)),
    "mocov2_small": dict(_BASE, crop_scale=(0.2, 1.0), saturation=0.4, blur_p=(0.0, 0.0),
                         solarize_p=(0.0, 0.0)),
    "mocov3_small": dict(_BASE, crop_scale=(0.08, 1.0), saturation=0.2, blur_p=(0.0, 0.0),
                         solarize_p=(0.0, 0.2)),
}


def register_preset(name: str, **params: Any) -> None:
    """Add preset ``name``: every key of :data:`OVERRIDE_KEYS`, checked as a config's values
    are (a method names it as its ``augment_preset``)."""
    missing = sorted(set(OVERRIDE_KEYS) - set(params))
    if missing:
        raise ValueError(f"preset '{name}' misses {', '.join(missing)}")
    if PRESETS.get(name, params) != params:
        raise ValueError(f"preset '{name}' is registered already, with other values")
    PRESETS[name] = check_augment(params)


CPU_CHUNK_BYTES = 8 << 20  # see TwoViews._chunked


class RandomResizedCrop(nn.Module):
    """kornia's RandomResizedCrop (bilinear, corner-aligned), the fastest mode per device.

    CPU: "slice" mode (crop each image, resize with ``F.interpolate``), ~2.5x faster there
    than one ``grid_sample`` warp; CUDA and others: "resample" mode (one batched warp, no
    per-image loop or host sync). Both draw the same boxes from the same RNG and give the
    same output to float rounding.
    """

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float]):
        super().__init__()
        kw = dict(size=(size, size), scale=scale, ratio=ratio, resample="bilinear",
                  same_on_batch=False, align_corners=True, p=1.0, keepdim=False)
        self.per_image = K.RandomResizedCrop(**kw, cropping_mode="slice")
        self.batched = K.RandomResizedCrop(**kw, cropping_mode="resample")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.per_image if x.device.type == "cpu" else self.batched)(x)


def resolve_params(preset: str, **overrides: Any) -> dict[str, Any]:
    """The preset's parameters with non-None ``overrides`` applied (checked once, by
    :func:`sslkit.config.rules.check_augment`; pairs as tuples)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown augmentation preset '{preset}' (augment.preset); valid: "
                          f"{', '.join(PRESETS)}, or auto (the method's)")
    return {**PRESETS[preset], **check_augment(overrides)}


def _view_chain(spec: PhotometricSpec, p: dict[str, Any], view: int) -> nn.Sequential:
    """View ``view`` (0 or 1): the crop, the photometric ops of the table
    (:func:`sslkit.views.photometric.device_ops`), the flip; every argument pinned."""
    ops: list[nn.Module] = [RandomResizedCrop(spec.size, p["crop_scale"], p["crop_ratio"]),
                            *device_ops(spec, view)]
    if p["flip_p"] > 0:
        ops.append(K.RandomHorizontalFlip(p=p["flip_p"], p_batch=1.0, same_on_batch=False,
                                          keepdim=False))
    return nn.Sequential(*ops)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float input is taken as [0, 1] already."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def _stats(values: Optional[Sequence[float]], default: Sequence[float], channels: int) -> torch.Tensor:
    vals = list(default) if values is None else [float(v) for v in values]
    return torch.tensor(vals * channels if len(vals) == 1 else vals,
                        dtype=torch.float32).view(1, channels, 1, 1)


class Normalized(nn.Module):
    """Holds ``mean``/``std`` buffers (1, C, 1, 1): ``normalize(x) = (x - mean) / std``."""

    def __init__(self, image_size: int, channels: int, mean, std):
        super().__init__()
        check_normalization(mean, std, channels)
        self.image_size, self.channels = int(image_size), int(channels)
        default_mean = IMAGENET_MEAN if channels == 3 else luma_of(IMAGENET_MEAN)
        default_std = IMAGENET_STD if channels == 3 else luma_of(IMAGENET_STD)
        self.register_buffer("mean", _stats(mean, default_mean, channels), persistent=False)
        self.register_buffer("std", _stats(std, default_std, channels), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected images (B, {self.channels}, H, W), got {tuple(images.shape)}")
        return to_unit_float(images)


def _photometric(chain: nn.Sequential) -> nn.Sequential:
    """The chain without its geometric ops (the crop and the flip), sharing their modules."""
    geometric = (RandomResizedCrop, K.RandomHorizontalFlip)
    return nn.Sequential(*[m for m in chain if not isinstance(m, geometric)])


class TwoViews(Normalized):
    """``forward(images (B, C, H, W)) -> (view1, view2)``, each (B, C, S, S) float32, normalised.

    ``forward((crops1, crops2))``, two batches already cropped to S and flipped in the loader
    (ImageFolder crops of the whole image, :mod:`sslkit.data.crops`), applies only each view's
    photometric part (jitter, grayscale, blur, solarize) and the normalisation.
    """

    def __init__(self, spec: PhotometricSpec, mean, std, params: dict[str, Any], preset: str):
        super().__init__(spec.size, spec.channels, mean, std)
        self.view1, self.view2 = _view_chain(spec, params, 0), _view_chain(spec, params, 1)
        self.spec, self.params, self.preset = spec, params, preset
        self.photometric1, self.photometric2 = _photometric(self.view1), _photometric(self.view2)

    @torch.no_grad()
    def forward(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(images, (tuple, list)):
            return (self._chunked(self.photometric1, images[0]),
                    self._chunked(self.photometric2, images[1]))
        return self._chunked(self.view1, images), self._chunked(self.view2, images)

    def _chunked(self, chain: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``normalize(chain(images))``; on the CPU in chunks of about CPU_CHUNK_BYTES of
        float32 output each (the intermediate tensors then stay in the cache: 2.5x faster at
        224 px). Small images (the 28-32 px datasets) fit in one chunk."""
        if images.device.type != "cpu":
            return self.normalize(chain(self._input(images)))
        per_image = 4 * self.channels * max(images.shape[-2] * images.shape[-1],
                                            self.image_size ** 2)
        step = max(1, CPU_CHUNK_BYTES // per_image)
        if step >= images.shape[0]:
            return self.normalize(chain(self._input(images)))
        return torch.cat([self.normalize(chain(self._input(images[s:s + step])))
                          for s in range(0, images.shape[0], step)])

    @torch.no_grad()
    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 views whose photometric part the loader applied already
        (:mod:`sslkit.views.photometric`) -> float32, normalised: ``(x / 255 - mean) / std`` in one
        output, a cache-sized chunk at a time (2.7x faster than whole-batch ops on one core)."""
        self._input(images[:0])  # the shape check
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
        scale = 1.0 / (255.0 * self.std.to(images.device))
        shift = self.mean.to(images.device) / self.std.to(images.device)
        step = max(1, CPU_CHUNK_BYTES // (4 * images[:1].numel() or 1))
        for s in range(0, images.shape[0], step):
            out[s:s + step].copy_(images[s:s + step]).mul_(scale).sub_(shift)
        return out


def build_views(preset: str, image_size: int, mean: Optional[Sequence[float]] = None,
                std: Optional[Sequence[float]] = None, *, channels: Optional[int] = None,
                **overrides: Any) -> TwoViews:
    """Two-view augmentation module of ``preset`` at output side ``image_size``.

    ``mean``/``std``: per-channel normalisation (one value is broadcast; default ImageNet's,
    or its BT.601 luma mix for 1 channel). ``channels``: 1 or 3 (default: ``len(mean)`` when
    it is 1 or 3, else 3). ``overrides``: :data:`OVERRIDE_KEYS` (the AugmentConfig keys);
    None keeps the preset's value; ``blur_p``/``solarize_p`` take one value or a
    (view 1, view 2) pair.
    """
    if channels is None:
        channels = len(mean) if mean is not None and len(mean) in (1, 3) else 3
    if channels not in (1, 3):
        raise ConfigError(f"augmentation supports 1 or 3 channels, not {channels}")
    if image_size < 8:
        raise ConfigError(f"image size {image_size} is too small for the augmentation (>= 8)")
    p = resolve_params(preset, **overrides)
    return TwoViews(PhotometricSpec.from_params(p, image_size, channels), mean, std, p, preset)


def views_from_config(cfg: Any) -> TwoViews:
    """:func:`build_views` from a resolved :class:`sslkit.config.Config` (its preset named:
    ``auto`` is the method's, filled by :func:`sslkit.methods.resolve.resolved`)."""
    if cfg.augment.preset == "auto":
        raise ConfigError("augment.preset=auto is the method's preset: resolve the config "
                          "first (sslkit.methods.resolved(cfg))")
    mean, std = normalization(cfg.data.name, cfg.data.channels, cfg.data.mean, cfg.data.std)
    overrides = {k: getattr(cfg.augment, k) for k in OVERRIDE_KEYS}
    return build_views(cfg.augment.preset, cfg.data.image_size, mean, std,
                       channels=cfg.data.channels, **overrides)


# --------------------------------------------------------------------------- evaluation views
class CenterView(Normalized):
    """Deterministic evaluation view: centre crop, resize to S, normalise (the one eval view of
    sslkit: the online kNN monitor and run_lincls both use it).

    The centre square of side ``round(min(H, W) * crop_fraction)`` is resized to
    ``image_size`` (bilinear, antialiased; skipped when the sizes already match). For
    ImageFolder data loaded at ``load_size`` = 256 and ``image_size`` = 224,
    ``crop_fraction = 224 / 256`` is Resize(256) + CenterCrop(224).
    """

    def __init__(self, image_size: int, channels: int, mean, std, crop_fraction: float = 1.0):
        super().__init__(image_size, channels, mean, std)
        if not 0 < crop_fraction <= 1:
            raise ConfigError(f"crop fraction {crop_fraction} must be in (0, 1]")
        self.crop_fraction = float(crop_fraction)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._input(images)
        h, w = x.shape[-2:]
        side = max(1, round(min(h, w) * self.crop_fraction))
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top:top + side, left:left + side]
        if side != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return self.normalize(x)


def eval_transform_from_config(cfg: Any) -> CenterView:
    """The evaluation view of ``cfg``: a source of image files (ImageFolder) crops
    ``image_size/load_size`` of the square."""
    mean, std = normalization(cfg.data.name, cfg.data.channels, cfg.data.mean, cfg.data.std)
    fraction = 1.0
    if dataset_info(cfg.data.name).files:
        load = cfg.data.load_size or resize_side(cfg.data.image_size)
        fraction = min(1.0, cfg.data.image_size / load)
    return CenterView(cfg.data.image_size, cfg.data.channels, mean, std, fraction)



__all__ = ["PRESETS", "OVERRIDE_KEYS", "build_views", "register_preset", "views_from_config",
           "TwoViews", "adjust_hue_turns", "ColorJitter", "RandomResizedCrop", "RandomSolarize",
           "CenterView", "eval_transform_from_config", "resolve_params", "blur_kernel_size",
           "to_unit_float"]
