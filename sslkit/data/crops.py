"""Random-resized crops of the WHOLE decoded image, two views per image, in the loader, for
any source of encoded images (:class:`sslkit.data.encoded.EncodedImages`: ImageFolder,
WebDataset shards, Parquet files).

The MoCo recipes (facebookresearch/moco and moco-v3 ``main_moco.py``) apply torchvision's
``RandomResizedCrop`` and ``RandomHorizontalFlip`` to the original photo, once per view. Here
each image is decoded ONCE per step and both views are cut from it:

* the crop box of each view is drawn exactly as ``torchvision.transforms.RandomResizedCrop.
  get_params`` draws it (same algorithm and random calls: :func:`rrc_params`), on the original
  height and width, from a generator seeded by ``(run seed, epoch, image index)``, so a run
  is reproducible and resumable whatever the number of loader workers;
* the flips are ``rand(2) < flip_p`` from the same generator, after the two boxes;
* CPU decoding (the default, :class:`TwoCropDataset`) uses PIL, with a reduced-size JPEG decode
  (``Image.draft``: DCT scaling by 1/2, 1/4 or 1/8) when both crop boxes still hold at least
  the output size at that scale, then ``resize(box=...)`` crops and resizes in one antialiased
  bilinear pass, as torchvision's ``resized_crop`` does on a PIL image;
* GPU decoding (``data.decode_device: cuda``, :class:`EncodedTwoCropDataset`): the workers only
  read the image's bytes and its header size and draw the boxes; :func:`decode_views` decodes
  the batch with ``torchvision.io.decode_jpeg(..., device=...)`` (nvjpeg on CUDA), crops and
  resizes on the device (bilinear, antialiased); a file that decoder cannot read (PNG, CMYK or
  corrupt data) falls back to the CPU decoder and is counted.

The photometric part (colour jitter, grayscale, blur, solarize, normalise) then runs batched
on the training device (:class:`sslkit.augment.TwoViews`); on a CPU training device the
loader applies it too, per view, through the ``photometric`` callable that
:class:`TwoCropDataset` is given (:class:`sslkit.views.photometric.WorkerPhotometric`), and the
device only normalises. The flip commutes with all of those, so flipping in the loader keeps
the recipe's distribution.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Sampler, default_collate
from torchvision.io import ImageReadMode, decode_jpeg

from sslkit.data.encoded import EncodedImages, open_image
from sslkit.errors import DataError


@dataclass(frozen=True)
class CropSpec:
    """The geometric part of a view: output side, RandomResizedCrop scale and ratio, flip."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip_p: float


def rrc_params(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
               generator: Optional[torch.Generator] = None) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random-resized crop: torchvision's
    ``RandomResizedCrop.get_params`` with an explicit generator.

    Up to 10 tries: area fraction ~ U(scale), log aspect ratio ~ U(log ratio), ``w =
    round(sqrt(A r))``, ``h = round(sqrt(A / r))``; the first box that fits gets a uniform
    position (``randint`` for the top, then the left). Otherwise a centre crop of the whole
    image with the ratio clamped to ``ratio``. With the same seed, the same boxes as
    torchvision's.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1],
                                                     generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1],
                                                   generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
            left = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's random views in one epoch."""
    return (int(seed) * 0x9E3779B97F4A7C15 + int(epoch) * 0xBF58476D1CE4E5B9
            + int(index) * 0x94D049BB133111EB) % (2 ** 63)


def draw_views(height: int, width: int, spec: CropSpec, seed: int) -> torch.Tensor:
    """(2, 5) int64: per view ``[top, left, h, w, flip]`` on a ``height x width`` image."""
    g = torch.Generator().manual_seed(int(seed))
    boxes = [rrc_params(height, width, spec.scale, spec.ratio, g) for _ in range(2)]
    flips = (torch.rand(2, generator=g) < spec.flip_p).tolist()
    return torch.tensor([[*b, int(f)] for b, f in zip(boxes, flips)], dtype=torch.int64)


def draft_scale(params: torch.Tensor, size: int) -> int:
    """The largest JPEG DCT scale 1/s (s in 1, 2, 4, 8) at which every crop box still holds at
    least ``size`` pixels each way, so that the final resize never upsamples what a full
    decode would not."""
    smallest = int(params[:, 2:4].min())
    s = 1
    while s < 8 and smallest // (2 * s) >= size:
        s *= 2
    return s


def _pil_mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def _to_chw(im: Image.Image) -> torch.Tensor:
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def crop_views_pil(im: Image.Image, params: torch.Tensor, size: int, full: tuple[int, int]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of ``params`` (boxes in the pixels of the ``full`` (width, height)
    image) from ``im``, which may be decoded at a reduced size: antialiased bilinear resize of
    each box to ``size``, then the flip. Returns uint8 (C, size, size) tensors."""
    fx, fy = im.size[0] / full[0], im.size[1] / full[1]
    out = []
    for top, left, h, w, flip in params.tolist():
        box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
        view = im.resize((size, size), Image.BILINEAR, box=box)
        if flip:
            view = view.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(_to_chw(view))
    return out[0], out[1]


Photometric = Callable[[tuple[torch.Tensor, torch.Tensor], int], tuple[torch.Tensor, torch.Tensor]]


def decode_two_views(src, spec: CropSpec, seed: int, channels: int = 3,
                     photometric: Optional[Photometric] = None
                     ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Decode ``src`` (encoded bytes, or a file path) once (at a reduced JPEG scale when the
    boxes allow) and cut its two views, then ``photometric(views, seed)`` if given; returns
    ``((view1, view2), params)``."""
    with open_image(src) as im:
        width, height = im.size
        params = draw_views(height, width, spec, seed)
        s = draft_scale(params, spec.size) if im.format == "JPEG" else 1
        if s > 1:
            im.draft(_pil_mode(channels), (width // s, height // s))
        im = im.convert(_pil_mode(channels))
        views = crop_views_pil(im, params, spec.size, (width, height))
    if photometric is not None:
        views = photometric(views, seed)
    return views, params


class TwoCropDataset(Dataset):
    """Pretraining views of a source of encoded images, decoded on the CPU:
    ``load((index, seed))`` -> ``((view1, view2) uint8 (C, S, S) each, label, skipped
    names)`` (see the module docstring), with ``photometric(views, seed)`` applied when given.
    Undecodable images follow the base dataset's ``skip_corrupt`` rule."""

    def __init__(self, base: EncodedImages, spec: CropSpec,
                 photometric: Optional[Photometric] = None):
        self.base, self.spec, self.photometric = base, spec, photometric
        self.labels = base.labels
        self.num_classes = base.num_classes

    def __len__(self) -> int:
        return len(self.base)

    def load(self, key: tuple[int, int]):
        index, seed = key
        views, label, skipped, _ = self.base.first_decodable(
            index, lambda data: decode_two_views(data, self.spec, seed, self.base.channels,
                                                 self.photometric)[0])
        return views, label, skipped

    @staticmethod
    def collate(payloads: list) -> tuple[torch.Tensor, torch.Tensor]:
        # default_collate stacks straight into shared memory in a worker (torch.stack would
        # make a batch that is copied there once more on its way to the main process)
        return (default_collate([p[0] for p in payloads]),
                default_collate([p[1] for p in payloads]))


@dataclass
class EncodedBatch:
    """A batch of undecoded images and their views' parameters (``data.decode_device: cuda``):
    ``names`` (where each image came from, for messages), ``data`` (uint8 byte tensors) and
    ``params`` (B, 2, 5) ``[top, left, h, w, flip]``."""

    names: list[str]
    data: list[torch.Tensor]
    params: torch.Tensor

    def __len__(self) -> int:
        return len(self.data)


def read_encoded(data: bytes, spec: CropSpec, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The image's bytes (a uint8 tensor) and views' parameters, from the header alone (no
    decode). Non-image data, or a JPEG without its end-of-image marker (truncated), fails
    here."""
    with Image.open(io.BytesIO(data)) as im:  # reads the header only
        width, height, fmt = *im.size, im.format
    if fmt == "JPEG" and b"\xff\xd9" not in data[-4096:]:
        raise OSError("truncated JPEG: no end-of-image marker")
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return raw, draw_views(height, width, spec, seed)


class EncodedTwoCropDataset(TwoCropDataset):
    """Like :class:`TwoCropDataset`, but the workers only read bytes and draw the boxes; the
    batch is decoded on the device by :func:`decode_views`."""

    def load(self, key: tuple[int, int]):
        index, seed = key
        (raw, params), label, skipped, j = self.base.first_decodable(
            index, lambda data: read_encoded(data, self.spec, seed))
        return (self.base.where(j), raw, params), label, skipped

    @staticmethod
    def collate(payloads: list) -> EncodedBatch:
        return EncodedBatch([p[0] for p in payloads], [p[1] for p in payloads],
                            torch.stack([p[2] for p in payloads]))


def is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 3 and bool(data[0] == 0xFF) and bool(data[1] == 0xD8)


def _decode_all(data: list[torch.Tensor], mode: ImageReadMode, device: torch.device
                ) -> list[Optional[torch.Tensor]]:
    """decode_jpeg on ``device`` for the JPEGs of ``data`` (one batched call, then one by one
    if the batch fails); None where it could not decode."""
    out: list[Optional[torch.Tensor]] = [None] * len(data)
    jpegs = [i for i, d in enumerate(data) if is_jpeg(d)]
    if not jpegs:
        return out
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they stay the
        # only batched nvjpeg decoder of the supported torchvision versions (>= 0.16)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            decoded = decode_jpeg([data[i] for i in jpegs], mode=mode, device=device)
            for i, img in zip(jpegs, decoded):
                out[i] = img
        except RuntimeError:
            for i in jpegs:
                try:
                    out[i] = decode_jpeg(data[i], mode=mode, device=device)
                except RuntimeError:
                    out[i] = None
    return out


def _decode_cpu(data: torch.Tensor, channels: int) -> torch.Tensor:
    with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
        return _to_chw(im.convert(_pil_mode(channels)))


def _resized_crop(img: torch.Tensor, top: int, left: int, h: int, w: int, size: int,
                  flip: int) -> torch.Tensor:
    """(C, H, W) uint8 -> (C, size, size) uint8: bilinear, antialiased, then the flip."""
    x = img[None, :, top:top + h, left:left + w].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)
    x = x.round_().clamp_(0, 255).to(torch.uint8)[0]
    return x.flip(-1) if flip else x


def decode_views(batch: EncodedBatch, size: int, device: torch.device, channels: int = 3,
                 skip_corrupt: bool = False, source: str = "imagefolder"
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], int, list[str]]:
    """Decode an :class:`EncodedBatch` on ``device`` and cut its views. Returns ``((view1,
    view2) uint8 (B, C, size, size) on device, CPU fallbacks, skipped names)``.

    An image neither decoder can read raises DataError naming it (``source``: the dataset's
    name, for the message), or with ``skip_corrupt`` is replaced by another image of the
    batch (the batch keeps its size) and reported.
    """
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    images = _decode_all(batch.data, mode, device)
    fallbacks, skipped = 0, []
    for i, img in enumerate(images):
        if img is not None:
            continue
        fallbacks += 1  # not a JPEG, or one the device decoder refused: the CPU decoder
        try:
            images[i] = _decode_cpu(batch.data[i], channels).to(device, non_blocking=True)
        except Exception as e:  # any decoder failure
            if not skip_corrupt:
                raise DataError(f"{source}: cannot decode image '{batch.names[i]}' "
                                f"({type(e).__name__}: {e}); replace it, or set "
                                f"data.skip_corrupt=true to skip undecodable images") from None
            skipped.append(batch.names[i])
    good = [i for i, img in enumerate(images) if img is not None]
    if not good:
        raise DataError(f"{source}: no image of a batch could be decoded (e.g. "
                        f"'{batch.names[0]}')")
    params = batch.params.clone()
    bad = [i for i, img in enumerate(images) if img is None]
    for k, i in enumerate(bad):
        j = good[k % len(good)]
        images[i], params[i] = images[j], params[j]
    views = ([], [])
    for img, p in zip(images, params.tolist()):
        for v in (0, 1):
            views[v].append(_resized_crop(img, *p[v][:4], size, p[v][4]))
    return (torch.stack(views[0]), torch.stack(views[1])), fallbacks, skipped


class SeededSampler(Sampler):
    """Wraps a :class:`~sslkit.data.loaders.TrainSampler`: yields ``(index, seed)`` with
    :func:`sample_seed` of the sampler's current epoch, so an image gets the same views
    whichever worker loads it, and a resumed run draws what the uninterrupted one drew."""

    def __init__(self, sampler, seed: int):
        self.sampler, self.seed = sampler, int(seed)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        for i in self.sampler.indices().tolist():
            yield i, sample_seed(self.seed, epoch, i)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
