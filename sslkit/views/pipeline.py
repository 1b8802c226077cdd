"""The pretraining input of a config: dataset, sampler, loader and the two views on the device.

Pretraining and the augmentation preview (``python -m sslkit.preview``, the TensorBoard grid)
both build it here, so the preview shows exactly what training sees.

* Fixed-size datasets (Fashion-MNIST, CIFAR, STL-10, synthetic) and sources of encoded
  images with ``data.crop_from: square``: the loader yields uint8 batches; every random op of both views
  runs on the device (:class:`sslkit.augment.TwoViews`).
* A source of encoded images (ImageFolder, WebDataset shards, Parquet: ``yields="files"``,
  any :class:`sslkit.data.encoded.EncodedImages`) with ``data.crop_from: original`` (the
  default): the loader cuts both views' random-resized crops from the whole decoded image
  (:mod:`sslkit.data.crops`), and the device runs only the photometric part. With ``data.decode_device: cuda`` the workers read
  bytes only and the batch is decoded on the GPU (nvjpeg). On a CPU training device the
  workers apply the photometric part too, per view (:mod:`sslkit.views.photometric`, same ops and
  draws' distributions), and the main process only normalises.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from sslkit.augment import TwoViews, to_unit_float, views_from_config
from sslkit.config import Config
from sslkit.data import TrainSampler, build_loader, dataset_from_config, dataset_info
from sslkit.data.encoded import open_image
from sslkit.data.crops import (CropSpec, EncodedBatch, EncodedTwoCropDataset, SeededSampler,
                               TwoCropDataset, decode_two_views, decode_views, sample_seed)
from sslkit.errors import ConfigError
from sslkit.views.photometric import WorkerPhotometric

log = logging.getLogger("sslkit.data")

BOX_COLOURS = ((230, 60, 50), (40, 170, 230))  # view 1, view 2 on the originals row


def crops_from_original(cfg: Config) -> bool:
    """Whether the loader cuts both views' crops from the whole decoded image: a source that
    decodes files (:attr:`sslkit.data.DatasetInfo.files`) with ``data.crop_from: original``."""
    return dataset_info(cfg.data.name).files and cfg.data.crop_from == "original"


def photometric_in_loader(cfg: Config, device: torch.device) -> bool:
    """Whether the loader applies the photometric ops too: crops of the original image,
    decoded on the CPU, for a CPU training device (on a GPU they run batched there)."""
    return (crops_from_original(cfg) and cfg.data.decode_device == "cpu"
            and device.type == "cpu")


@dataclass
class PretrainInput:
    """Everything between the files and the two normalised views of a training step."""

    cfg: Config
    device: torch.device
    dataset: Any  # what the loader reads (a two-crop wrapper for crops of the originals)
    base: Any  # the dataset of single images (labels, subsets, previews)
    sampler: TrainSampler
    loader: Any
    views: TwoViews
    spec: Optional[CropSpec] = None
    photometric: Optional[WorkerPhotometric] = None  # set: the loader's views are finished
    decode_fallbacks: int = 0
    decode_skipped: int = 0

    def to_views(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """What the loader yields for a batch -> (view1, view2) on the device."""
        if isinstance(images, EncodedBatch):
            images, fallbacks, skipped = decode_views(
                images, self.spec.size, self.device, self.cfg.data.channels,
                self.cfg.data.skip_corrupt, self.cfg.data.name)
            self._count(fallbacks, skipped)
        elif isinstance(images, (tuple, list)):
            images = tuple(t.to(self.device, non_blocking=True) for t in images)
        else:
            images = images.to(self.device, non_blocking=True)
        return self._views(images)

    def _views(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        if self.photometric is not None:  # the loader applied the photometric part
            return self.views.normalized(images[0]), self.views.normalized(images[1])
        return self.views(images)

    def _count(self, fallbacks: int, skipped: list[str]) -> None:
        before = self.decode_fallbacks
        self.decode_fallbacks += fallbacks
        self.decode_skipped += len(skipped)
        if self.decode_fallbacks and (before == 0 or self.decode_fallbacks >= 2 * before > 0):
            log.warning("%d image(s) decoded on the CPU instead of the GPU (not JPEG, or refused "
                        "by nvjpeg) so far", self.decode_fallbacks)
        if skipped:
            log.warning("skipped %d undecodable image(s) (data.skip_corrupt=true), e.g. %s",
                        len(skipped), skipped[0])

    # ----------------------------------------------------------------- previews
    @torch.no_grad()
    def preview(self, indices: list[int], seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(originals, view 1, view 2) of the images ``indices``, each (n, 3, S, S) float in
        [0, 1], through this pipeline. Originals of encoded images show the whole image with
        the two crop boxes drawn on it (view 1 red, view 2 blue)."""
        size = self.cfg.data.image_size
        if self.spec is None:
            images = torch.stack([self.base[i][0] for i in indices]).to(self.device)
            v1, v2 = self.views(images)
            originals = to_unit_float(images)
            if originals.shape[-2:] != (size, size):
                originals = F.interpolate(originals, size=(size, size), mode="bilinear",
                                          align_corners=False, antialias=True)
        else:
            crops, originals = [], []
            for i in indices:
                (pair, boxed), _, _, _ = self.base.first_decodable(  # bad images as in training
                    i, lambda data: _original_with_boxes(data, self.spec, sample_seed(seed, 0, i),
                                                         self.cfg.data.channels, self.photometric))
                crops.append(pair)
                originals.append(boxed)
            pair = tuple(torch.stack([c[v] for c in crops]).to(self.device) for v in (0, 1))
            v1, v2 = self._views(pair)
            originals = torch.stack(originals).to(self.device)
        rows = [originals, self.views.denormalize(v1), self.views.denormalize(v2)]
        return tuple(_rgb(r.clamp(0, 1).float().cpu()) for r in rows)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _original_with_boxes(data: bytes, spec: CropSpec, seed: int, channels: int,
                         photometric: Optional[WorkerPhotometric] = None
                         ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The two crops of the encoded image ``data`` (as training cuts them, with the loader's
    photometric part when it has one) and the whole image fitted into an S x S square with
    both crop boxes outlined."""
    pair, params = decode_two_views(data, spec, seed, channels, photometric)  # as in training
    with open_image(data) as im:
        width, height = im.size
        full = im.convert("RGB")
    s = spec.size / max(width, height)
    canvas = Image.new("RGB", (spec.size, spec.size), (255, 255, 255))
    thumb = full.resize((max(1, round(width * s)), max(1, round(height * s))),
                                       Image.BILINEAR)
    ox, oy = (spec.size - thumb.width) // 2, (spec.size - thumb.height) // 2
    canvas.paste(thumb, (ox, oy))
    draw = ImageDraw.Draw(canvas)
    for (top, left, h, w, _), colour in zip(params.tolist(), BOX_COLOURS):
        draw.rectangle([ox + left * s, oy + top * s, ox + (left + w) * s - 1,
                        oy + (top + h) * s - 1], outline=colour, width=max(2, spec.size // 48))
    arr = torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pair, arr.float() / 255.0


def build_pretrain_input(cfg: Config, device: torch.device, rank: int = 0, world: int = 1,
                         local_batch: Optional[int] = None, loader: bool = True
                         ) -> PretrainInput:
    """The training input of ``cfg`` for process ``rank`` of ``world`` (batch ``local_batch``
    per process, default the global batch); ``loader=False`` leaves out the loader (the
    preview reads images one by one)."""
    local_batch = local_batch or cfg.train.batch_size
    base = dataset_from_config(cfg.data, "pretrain", seed=cfg.run.seed)
    views = views_from_config(cfg).to(device)
    sampler = TrainSampler(len(base), seed=cfg.run.seed, rank=rank, world_size=world,
                           drop_last=True)
    dataset, loader_sampler, spec, photometric = base, sampler, None, None
    if crops_from_original(cfg):
        if cfg.data.decode_device == "cuda" and device.type != "cuda":
            raise ConfigError("data.decode_device=cuda needs a CUDA training device; use "
                              "--set data.decode_device=cpu")
        p = views.params
        spec = CropSpec(cfg.data.image_size, tuple(p["crop_scale"]), tuple(p["crop_ratio"]),
                        float(p["flip_p"]))
        if cfg.data.decode_device == "cuda":
            dataset = EncodedTwoCropDataset(base, spec)
        else:
            if photometric_in_loader(cfg, device):
                photometric = WorkerPhotometric.from_views(views)
            dataset = TwoCropDataset(base, spec, photometric)
        loader_sampler = SeededSampler(sampler, cfg.run.seed)
    batches = None
    if loader:
        batches = build_loader(dataset, local_batch, train=True, sampler=loader_sampler,
                               num_workers=cfg.data.num_workers,
                               pin_memory=device.type == "cuda", seed=cfg.run.seed)
    return PretrainInput(cfg, device, dataset, base, sampler, batches, views, spec, photometric)
