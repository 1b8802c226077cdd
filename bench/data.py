"""ImageFolder and shard training input, side by side in one run (rows go to
docs/benchmarks.md).

Images/s of what a pretraining step needs from an image folder, the two normalised 224 px
views of a batch of 256, on the training device:

* reference: torchvision ``ImageFolder`` with the MoCo-v2 aug+ pipeline of
  facebookresearch/moco ``main_moco.py`` applied per sample, twice, in DataLoader workers
  (RandomResizedCrop(224, 0.2-1) of the decoded photo, ColorJitter p 0.8, grayscale 0.2,
  PIL Gaussian blur p 0.5, flip, ToTensor, Normalize), then the views moved to the device;
* sslkit: ``sslkit.views.pipeline.build_pretrain_input`` of an imagefolder config, the code a
  training run uses: the workers decode each image once (reduced-size JPEG decode where the
  crops allow) and cut both views' crops of the whole image; on a CPU device they also apply
  each view's photometric ops (``sslkit.views.photometric``) and the main process normalises, on a
  GPU the photometric part runs batched there (kornia);
* sslkit with ``data.decode_device=cuda`` (GPU only): the workers read bytes, nvjpeg decodes;
* sslkit reading the same images from WebDataset shards and from Parquet files (the same
  pipeline; written once by ``python -m sslkit.data.shards``, 1000 images a shard, Parquet
  row groups of 16): a second table, ImageFolder / WebDataset / Parquet side by side.

Same workers, batch and image size for all. Each pipeline is timed over whole epochs of the
folder, alternating (reference, sslkit, reference, ...), each from starting its workers to
the last batch's views on the device; the median epoch is reported. A second
table times the per-image decode + two crops in one process: PIL with and without the
reduced-size decode, and torchvision.io.decode_jpeg + antialiased interpolate. A third
times each photometric op on one view in one process, one thread: the reference's PIL /
torchvision op against sslkit's loader op (float32 on the uint8 crop), the best of
alternating rounds.

The input is a generated folder of JPEGs at ImageNet-like sizes (500x375 and 375x500,
quality 90), made once under --folder.

    python bench/data.py                       # CPU, 2 workers (~8 min on 2 cores)
    python bench/data.py --device cuda --workers 8
    python bench/data.py --images 64 --batch 16 --repeats 1 --decode-images 8 --no-write  # smoke
"""
from __future__ import annotations

import argparse
import datetime
import gc
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, sync, torch_kornia_versions, write_rows  # noqa: E402
from sslkit import config  # noqa: E402
from sslkit.data.crops import CropSpec, decode_two_views, draw_views  # noqa: E402
from sslkit.data.shards import convert  # noqa: E402
from sslkit.methods import resolved  # noqa: E402
from sslkit.train.runtime import share_cores_with_workers  # noqa: E402
from sslkit.views.pipeline import build_pretrain_input  # noqa: E402

SECTION = "## ImageFolder input: decode and two views (`bench/data.py`)"
HEADER = ("| date | machine | device | torch / kornia | workers | batch | size | reference img/s "
          "| sslkit img/s | ratio | sslkit nvjpeg img/s | ratio |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")
DECODE_SECTION = "## ImageFolder decode + two crops, one process (`bench/data.py`)"
DECODE_HEADER = ("| date | machine | size | reference (PIL decode, 2x resized_crop) ms/img "
                 "| PIL + reduced-size decode ms/img | decode_jpeg + interpolate ms/img |\n"
                 "|---|---|---|---|---|---|")
SHARDS_SECTION = "## Shards input: ImageFolder, WebDataset, Parquet (`bench/data.py`)"
SHARDS_HEADER = ("| date | machine | device | workers | batch | size | ImageFolder img/s "
                 "| WebDataset img/s | ratio | Parquet img/s | ratio |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|")
OPS_SECTION = "## ImageFolder photometric ops per view, one process (`bench/data.py`)"
OPS_HEADER = ("| date | machine | size | op | reference (PIL / torchvision) ms | sslkit loader "
              "ms |\n|---|---|---|---|---|---|")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_folder(folder: Path, n: int, classes: int = 10) -> Path:
    """``folder/train/<class>/*.jpg``: n photos-like JPEGs (smooth shapes plus texture), half
    500x375, half 375x500, quality 90."""
    train = folder / "train"
    if train.is_dir() and sum(1 for _ in train.rglob("*.jpg")) >= n:
        return folder
    g = np.random.default_rng(0)
    for k in range(n):
        w, h = (500, 375) if k % 2 else (375, 500)
        coarse = Image.fromarray(g.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        fine = Image.fromarray(g.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
        arr = 0.75 * np.asarray(coarse, np.float32) + 0.25 * np.asarray(fine, np.float32)
        arr += g.normal(0, 4, arr.shape)
        d = train / f"c{k % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(d / f"{k:05d}.jpg", quality=90)
    (folder / "val").mkdir(exist_ok=True)
    return folder


class Blur:
    """MoCo's ``moco.loader.GaussianBlur``: PIL blur with sigma ~ U[0.1, 2.0]."""

    def __call__(self, im):
        return im.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


def reference_loader(folder: Path, size: int, batch: int, workers: int, pin: bool):
    import torchvision.datasets as D
    import torchvision.transforms as T

    aug = T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0)),
                     T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                     T.RandomGrayscale(p=0.2), T.RandomApply([Blur()], p=0.5),
                     T.RandomHorizontalFlip(), T.ToTensor(),
                     T.Normalize(MEAN, STD)])
    ds = D.ImageFolder(str(folder / "train"), transform=lambda im: (aug(im), aug(im)))
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                       drop_last=True, pin_memory=pin, prefetch_factor=4)


def make_shards(folder: Path, n: int) -> dict[str, Path]:
    """The folder's training images as WebDataset shards and Parquet files (written once,
    beside it, by sslkit's writer: the same bytes)."""
    out = {}
    for fmt in ("webdataset", "parquet"):
        dest = folder.parent / f"{folder.name}_{fmt}_{n}"
        if not dest.is_dir():
            convert(str(folder), str(dest), fmt, shard_size=1000, progress=False)
        out[fmt] = dest
    return out


def sslkit_config(folder: Path, size: int, batch: int, workers: int, decode: str,
                  name: str = "imagefolder"):
    return resolved(config.load(None, [
        f"data.name={name}", f"data.root={folder}", f"data.image_size={size}",
        f"data.num_workers={workers}", f"train.batch_size={batch}", "augment.preset=mocov2",
        f"data.decode_device={decode}", "method.queue_size=65536", "run.seed=0"]))


def block(kind: str, args, device: torch.device) -> float:
    """Images/s over one epoch of the folder (every full batch), timed from starting the
    workers to the last batch's views on the device."""
    if kind == "reference":
        loader = reference_loader(args.folder, args.size, args.batch, args.workers,
                                  device.type == "cuda")

        def views(batch):
            (v1, v2), _ = batch
            return v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)
    else:
        decode = "cuda" if kind == "nvjpeg" else "cpu"
        name = kind if kind in ("webdataset", "parquet") else "imagefolder"
        root = args.shards[name] if name != "imagefolder" else args.folder
        cfg = sslkit_config(root, args.size, args.batch, args.workers, decode, name)
        pipe = build_pretrain_input(cfg, device)
        loader = pipe.loader
        # the threads a run leaves its main process beside the workers (sslkit.train.engine)
        share_cores_with_workers(cfg.run, device, getattr(loader, "num_workers", 0))

        def views(batch):
            return pipe.to_views(batch[0])
    sync(device)
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        views(batch)
        n += args.batch
    sync(device)
    rate = n / (time.perf_counter() - t0)
    del loader, views
    gc.collect()
    return rate


def decode_times(folder: Path, size: int, n: int) -> tuple[float, float, float]:
    """ms per image for decode + two crops in one process (one thread)."""
    import torchvision.transforms as T
    from torchvision.io import ImageReadMode, decode_jpeg

    paths = sorted((folder / "train").rglob("*.jpg"))[:n]
    spec = CropSpec(size, (0.2, 1.0), (3 / 4, 4 / 3), 0.5)
    rrc = T.RandomResizedCrop(size, scale=(0.2, 1.0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def reference():
        for p in paths:
            with Image.open(p) as im:
                im = im.convert("RGB")
                rrc(im), rrc(im)

    def pil_draft():
        for k, p in enumerate(paths):
            decode_two_views(str(p), spec, k)

    def tv_decode():
        for k, p in enumerate(paths):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                img = decode_jpeg(torch.from_numpy(np.fromfile(p, dtype=np.uint8)),
                                  mode=ImageReadMode.RGB)
            params = draw_views(img.shape[1], img.shape[2], spec, k)
            for top, left, h, w, flip in params.tolist():
                x = F.interpolate(img[None, :, top:top + h, left:left + w].float(),
                                  size=(size, size), mode="bilinear", antialias=True)
                x.round_().clamp_(0, 255).to(torch.uint8)

    out = []
    for fn in (reference, pil_draft, tv_decode):
        fn()
        t0 = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t0) / len(paths))
    torch.set_num_threads(threads)
    return tuple(out)


def op_times(folder: Path, size: int, n: int, rounds: int = 3) -> list[tuple[str, float, float]]:
    """``(op, reference ms, sslkit ms)`` per view for the photometric ops on n crops, one
    thread; each pair timed alternately ``rounds`` times, the best kept. Fixed factors for
    the jitter (brightness 1.2, contrast 0.8, saturation 1.2, hue 0.05), sigma 1 for the blur;
    "whole view" draws each op as the MoCo-v2 recipe does (p 0.8 / 0.2 / 0.5)."""
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF

    from sslkit.augment import build_views
    from sslkit.views.photometric import (ViewDraw, WorkerPhotometric, apply_view_uint8,
                                    draw_photometric)

    paths = sorted((folder / "train").rglob("*.jpg"))[:n]
    spec = CropSpec(size, (0.2, 1.0), (3 / 4, 4 / 3), 0.5)
    crops = [decode_two_views(str(p), spec, k)[0][0] for k, p in enumerate(paths)]
    pils = [Image.fromarray(c.permute(1, 2, 0).numpy()) for c in crops]
    views = build_views("mocov2", size)
    ph = WorkerPhotometric.from_views(views).spec
    factors = dict(brightness=(1.2, 1.2), contrast=(0.8, 0.8), saturation=(1.2, 1.2),
                   hue=(0.05, 0.05))
    jitter = T.ColorJitter(**factors)
    recipe = T.Compose([T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                        T.RandomGrayscale(p=0.2), T.RandomApply([Blur()], p=0.5),
                        T.ToTensor(), T.Normalize(MEAN, STD)])
    seeds = iter(range(10 ** 9))

    def whole_view(c):  # view 1's draws; the main process normalises the batch: row above
        return apply_view_uint8(c, draw_photometric(ph, next(seeds))[0], ph)

    ops = [("colour jitter, 4 steps", jitter,
            lambda c: apply_view_uint8(c, ViewDraw(jitter=(1.2, 0.8, 1.2, 0.05)), ph)),
           ("grayscale", lambda im: TF.rgb_to_grayscale(im, 3),
            lambda c: apply_view_uint8(c, ViewDraw(gray=True), ph)),
           ("Gaussian blur, sigma 1", lambda im: im.filter(ImageFilter.GaussianBlur(1.0)),
            lambda c: apply_view_uint8(c, ViewDraw(sigma=1.0), ph)),
           ("to float + normalise (sslkit: main process, batched)",
            lambda im: TF.normalize(TF.to_tensor(im), MEAN, STD), None),
           ("whole view, MoCo-v2 draws (sslkit: without the normalise)", recipe, whole_view)]
    batch = torch.stack(crops)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = []
    for name, ref, ours in ops:
        def run_ref():
            for im in pils:
                ref(im)

        def run_ours():
            if ours is None:
                views.normalized(batch)
                return
            for c in crops:
                ours(c)
        best = [float("inf"), float("inf")]
        for _ in range(rounds):
            for k, fn in enumerate((run_ref, run_ours)):
                t0 = time.perf_counter()
                fn()
                best[k] = min(best[k], 1000 * (time.perf_counter() - t0) / len(crops))
        out.append((name, *best))
    torch.set_num_threads(threads)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, default=ROOT / "runs" / "bench_data")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3, help="blocks per pipeline")
    p.add_argument("--decode-images", type=int, default=200)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    make_folder(args.folder, args.images)
    args.shards = make_shards(args.folder, args.images)
    kinds = (["reference", "sslkit"] + (["nvjpeg"] if device.type == "cuda" else [])
             + ["webdataset", "parquet"])
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.repeats):
        for kind in kinds:
            rates[kind].append(block(kind, args, device))
            print(f"block {r + 1}: {kind} {rates[kind][-1]:.1f} img/s", flush=True)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    ref = med["reference"]
    nv = (f"{med['nvjpeg']:.0f} | {med['nvjpeg'] / ref:.2f}x" if "nvjpeg" in med else "- | -")
    date = datetime.date.today().isoformat()
    row = (f"| {date} | {machine(device)} | {device.type} | {torch_kornia_versions()} | "
           f"{args.workers} | {args.batch} | {args.size} | {ref:.0f} | {med['sslkit']:.0f} | "
           f"{med['sslkit'] / ref:.2f}x | {nv} |")
    srow = (f"| {date} | {machine(device)} | {device.type} | {args.workers} | {args.batch} | "
            f"{args.size} | {med['sslkit']:.0f} | {med['webdataset']:.0f} | "
            f"{med['webdataset'] / med['sslkit']:.2f}x | {med['parquet']:.0f} | "
            f"{med['parquet'] / med['sslkit']:.2f}x |")
    dref, dpil, dtv = decode_times(args.folder, args.size, args.decode_images)
    drow = (f"| {date} | {machine()} | {args.size} | {dref:.2f} | {dpil:.2f} | {dtv:.2f} |")
    orows = [f"| {date} | {machine()} | {args.size} | {name} | {ref:.2f} | {ours:.2f} |"
             for name, ref, ours in op_times(args.folder, args.size, args.decode_images)]
    print(row, srow, drow, *orows, sep="\n")
    if not args.no_write:
        write_rows(SECTION, HEADER, [row])
        write_rows(SHARDS_SECTION, SHARDS_HEADER, [srow])
        write_rows(DECODE_SECTION, DECODE_HEADER, [drow])
        write_rows(OPS_SECTION, OPS_HEADER, orows)


if __name__ == "__main__":
    main()
