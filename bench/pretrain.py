"""Pretraining step benchmarks, side by side in one run (rows go to docs/benchmarks.md).

1. Throughput (img/s) of sslkit's pipeline (uint8 batch -> device -> batched kornia views on
   the device -> MoCo-v2 step) against a reference-style pipeline with the same model, batch
   and step, where per-sample torchvision augmentation makes the two views in DataLoader
   workers (as the original MoCo code does) and the views are then moved to the device.
2. The share of the augmentation in sslkit's step (views timed alone vs the whole step).
3. The cost of a step with BatchFormer against one without, and the inference cost of the
   exported backbone against a plain torchvision model: a width-64 method with BatchFormer is
   exported and loaded into torchvision's own ResNet constructor (same stem); outputs must be
   identical and the time ratio ~1.

The pipelines are timed in alternating blocks of steps after a warm-up, so they share the
machine's background load. Defaults are the CPU demo's setting (Fashion-MNIST size, ResNet-18
at width 16, bf16 autocast); on a GPU use e.g. ``--device cuda --width 64 --image-size 32
--channels 3 --batch 512``.

    python bench/pretrain.py                       # CPU, ~3 min on 2 cores
    python bench/pretrain.py --device cuda --width 64 --channels 3 --image-size 32 --batch 512
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import (export_vs_torchvision, machine, timed_alternately,  # noqa: E402
                    torch_kornia_versions, write_rows)
from sslkit import config  # noqa: E402
from sslkit.augment import build_views, resolve_params  # noqa: E402
from sslkit.runtime import autocast  # noqa: E402
from sslkit.methods import build_method  # noqa: E402

SECTION = "## Pretraining step: pipeline, augmentation share, BatchFormer (`bench/pretrain.py`)"
HEADER = ("| date | machine | device | torch / kornia | model | batch | precision | workers "
          "| sslkit img/s | reference img/s | speed-up | aug share | BF step ratio "
          "| export / torchvision inference |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


class PerSampleTwoViews(torch.utils.data.Dataset):
    """The reference pipeline: each worker makes two views of one image at a time with
    torchvision.transforms.v2, same parameters as sslkit's ``mocov2_small`` preset."""

    def __init__(self, images: torch.Tensor, size: int, mean, std):
        from torchvision.transforms import v2

        p = resolve_params("mocov2_small")
        rgb = images.shape[1] == 3
        ops = [v2.RandomResizedCrop(size, scale=p["crop_scale"], ratio=p["crop_ratio"],
                                    antialias=True),
               v2.RandomApply([v2.ColorJitter(p["brightness"], p["contrast"],
                                              p["saturation"] if rgb else 0,
                                              p["hue"] if rgb else 0)], p=p["jitter_p"])]
        if rgb:
            ops.append(v2.RandomGrayscale(p=p["grayscale_p"]))
        ops += [v2.RandomHorizontalFlip(p=p["flip_p"]), v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean, std)]
        self.tf = v2.Compose(ops)
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        x = self.images[i]
        return self.tf(x), self.tf(x)


def make_cfg(args, bf: bool) -> config.Config:
    return config.build({}, [
        "data.name=synthetic", f"data.image_size={args.image_size}",
        f"data.channels={args.channels}", f"model.backbone={args.model}",
        f"model.width={args.width}", "model.cifar_stem=true", "method.name=mocov2",
        f"method.queue_size={args.batch * 16}", "method.temperature=0.1",
        f"batchformer.enabled={str(bf).lower()}", f"train.batch_size={args.batch}",
        "method.bn_splits=8" if args.batch % 8 == 0 else "method.bn_splits=1"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--workers", type=int, default=2, help="reference pipeline's workers")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.set_flush_denormal(True)
    where = machine(dev)
    torch.manual_seed(0)
    n = args.batch * 8
    images = torch.randint(0, 256, (n, args.channels, args.image_size, args.image_size),
                           dtype=torch.uint8)
    mean, std = [0.5] * args.channels, [0.25] * args.channels

    methods = {}
    for bf in (False, True):
        torch.manual_seed(0)
        m = build_method(make_cfg(args, bf)).to(dev).train()
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01,
                              momentum=0.9)
        methods[bf] = (m, opt)
    views = build_views("mocov2_small", args.image_size, mean, std,
                        channels=args.channels).to(dev)

    def step(bf: bool, v1: torch.Tensor, v2: torch.Tensor) -> None:
        m, opt = methods[bf]
        with autocast(dev, args.precision):
            loss, _ = m(v1, v2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        m.momentum_update(0.99)

    cursor = {"i": 0}

    def batch() -> torch.Tensor:
        i = cursor["i"] = (cursor["i"] + 1) % (n // args.batch)
        return images[i * args.batch:(i + 1) * args.batch].to(dev, non_blocking=True)

    def ours(bf: bool = False):
        def run():
            for _ in range(args.steps):
                step(bf, *views(batch()))
        return run

    def ours_aug_only():
        for _ in range(args.steps):
            views(batch())

    loader = torch.utils.data.DataLoader(
        PerSampleTwoViews(images, args.image_size, mean, std), batch_size=args.batch,
        shuffle=True, num_workers=args.workers, drop_last=True,
        persistent_workers=args.workers > 0, pin_memory=dev.type == "cuda")
    stream = {"it": iter(loader)}

    def reference():
        for _ in range(args.steps):
            try:
                v1, v2 = next(stream["it"])
            except StopIteration:
                stream["it"] = iter(loader)
                v1, v2 = next(stream["it"])
            step(False, v1.to(dev, non_blocking=True), v2.to(dev, non_blocking=True))

    t_ours, t_ref, t_bf, t_aug = timed_alternately(
        [ours(False), reference, ours(True), ours_aug_only], dev, args.blocks)
    img = args.steps * args.batch
    ours_ips, ref_ips = img / t_ours, img / t_ref
    print(f"sslkit {ours_ips:.0f} img/s, reference {ref_ips:.0f} img/s, "
          f"speed-up {ours_ips / ref_ips:.2f}x; augmentation {t_aug / t_ours:.1%} of a step; "
          f"BatchFormer step ratio {t_bf / t_ours:.3f}", flush=True)

    # exported backbone vs a plain torchvision model: a width-64 method WITH BatchFormer is
    # exported and loaded into torchvision's own resnet (same stem): identical outputs, cost
    import torchvision

    from sslkit.export import backbone_state_dict
    wide = argparse.Namespace(**{**vars(args), "width": 64})
    m = build_method(make_cfg(wide, True)).eval()
    exported = m.backbone.to(dev)
    tv = getattr(torchvision.models, args.model)()
    tv.conv1 = nn.Conv2d(args.channels, 64, 3, 1, 1, bias=False)
    tv.maxpool, tv.fc = nn.Identity(), nn.Identity()
    tv.load_state_dict(backbone_state_dict(m.state_dict()), strict=True)
    tv = tv.to(dev).eval()
    x = images[:64].to(dev).float() / 255

    ratio, same = export_vs_torchvision(exported, tv, x, dev,
                                        lambda: autocast(dev, args.precision), args.steps,
                                        args.blocks)

    if not args.no_write:
        versions = torch_kornia_versions()
        model = f"{args.model} w{args.width}, {args.channels}x{args.image_size}px"
        row = (f"| {datetime.date.today().isoformat()} | {where} | {dev.type} | {versions} | "
               f"{model} | {args.batch} | {args.precision} | {args.workers} | {ours_ips:,.0f} | "
               f"{ref_ips:,.0f} | {ours_ips / ref_ips:.2f}x | {t_aug / t_ours:.1%} | "
               f"{t_bf / t_ours:.3f} | {ratio:.3f} (identical outputs) |")
        write_rows(SECTION, HEADER, [row])
        print("added a row to docs/benchmarks.md")


if __name__ == "__main__":
    main()
