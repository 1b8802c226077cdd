"""Pretraining step benchmarks, side by side in one run (rows go to docs/benchmarks.md).

Every step timed here is the engine's own (:meth:`sslkit.train.engine.Trainer.train_step`, what
``run_pretrain.py`` runs: GradScaler, gradient clipping, non-finite guard, LR schedule, EMA),
of a Trainer built from ``--config`` (default ``configs/demo.yaml``, the demo's data, model
and recipe) with a throwaway run directory.

1. Throughput (img/s) of sslkit's pipeline (the run's loader: uint8 batch -> device ->
   batched kornia views on the device -> the step) against a reference-style pipeline with
   the same trainer, batch and step, where per-sample torchvision v2 transforms with the
   run's augmentation parameters make the two views in DataLoader workers (as the original
   MoCo code does), moved to the device and passed to the same step
   (``Trainer.train_step_on_views``).
2. The share of the augmentation in sslkit's step (the pipeline's ``to_views`` timed alone
   vs the whole step).
3. The step with ``batchformer.enabled=true`` against the same step without, and the
   inference cost of the exported backbone against a plain torchvision model: a width-64
   method with BatchFormer is exported and loaded into torchvision's own ResNet constructor
   (same stem); outputs must be identical and the time ratio ~1.

The pipelines are timed in alternating blocks of steps after a warm-up, so they share the
machine's background load.

    python bench/pretrain.py                       # CPU, the demo (~3 min on 2 cores)
    python bench/pretrain.py --device cuda --set model.width=64 data.name=synthetic data.channels=3 data.image_size=32 train.batch_size=512
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

from common import (EngineSteps, bench_precision, bench_trainer,  # noqa: E402
                    export_vs_torchvision, machine, timed_alternately, torch_kornia_versions,
                    write_rows)
from sslkit.methods import build_method  # noqa: E402
from sslkit.train.runtime import autocast  # noqa: E402

SECTION = ("## Pretraining step: pipeline, augmentation share, BatchFormer, the engine's step "
           "(`bench/pretrain.py`)")
HEADER = ("| date | machine | device | torch / kornia | model | batch | precision | workers "
          "| sslkit img/s | reference img/s | speed-up | aug share | BF step ratio "
          "| export / torchvision inference |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


class PerSampleTwoViews(torch.utils.data.Dataset):
    """The reference pipeline: each worker makes two views of one image at a time with
    torchvision.transforms.v2, with the run's (resolved) augmentation parameters."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int, aug, mean, std):
        from torchvision.transforms import v2

        rgb = images.shape[1] == 3
        ops = [v2.RandomResizedCrop(size, scale=tuple(aug.crop_scale),
                                    ratio=tuple(aug.crop_ratio), antialias=True),
               v2.RandomApply([v2.ColorJitter(aug.brightness, aug.contrast,
                                              aug.saturation if rgb else 0,
                                              aug.hue if rgb else 0)], p=aug.jitter_p)]
        if rgb:
            ops.append(v2.RandomGrayscale(p=aug.grayscale_p))
        ops += [v2.RandomHorizontalFlip(p=aug.flip_p), v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean, std)]
        self.tf = v2.Compose(ops)
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        x = self.images[i]
        return self.tf(x), self.tf(x), self.labels[i]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--set", nargs="+", default=[], dest="overrides", metavar="KEY=VALUE",
                    help="config overrides, as run_pretrain.py --set")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                    help="auto: bf16 where the device computes it natively, else fp32")
    ap.add_argument("--workers", type=int, default=2, help="reference pipeline's workers")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    dev = torch.device(args.device)
    precision = bench_precision(args.precision, dev)
    torch.set_flush_denormal(True)
    where = machine(dev)

    plain = bench_trainer(args.overrides, dev, precision, args.config)
    with_bf = bench_trainer([*args.overrides, "batchformer.enabled=true"], dev,
                            precision, args.config)
    cfg = plain.cfg
    ours, ours_bf = EngineSteps(plain), EngineSteps(with_bf)

    def ours_aug_only():
        for _ in range(args.steps):
            plain.input.to_views(ours.next_batch()[0])

    ds = plain.train_set
    loader = torch.utils.data.DataLoader(
        PerSampleTwoViews(ds.images, ds.labels, cfg.data.image_size, cfg.augment,
                          cfg.data.mean, cfg.data.std),
        batch_size=plain.local_batch, shuffle=True, num_workers=args.workers, drop_last=True,
        persistent_workers=args.workers > 0, pin_memory=dev.type == "cuda")
    stream = {"it": iter(loader)}

    def reference():
        for _ in range(args.steps):
            try:
                v1, v2, y = next(stream["it"])
            except StopIteration:
                stream["it"] = iter(loader)
                v1, v2, y = next(stream["it"])
            plain.train_step_on_views(v1.to(dev, non_blocking=True),
                                      v2.to(dev, non_blocking=True), y)

    t_ours, t_ref, t_bf, t_aug = timed_alternately(
        [lambda: ours.run(args.steps), reference, lambda: ours_bf.run(args.steps),
         ours_aug_only], dev, args.blocks)
    img = args.steps * cfg.train.batch_size
    ours_ips, ref_ips = img / t_ours, img / t_ref
    print(f"sslkit {ours_ips:.0f} img/s, reference {ref_ips:.0f} img/s, "
          f"speed-up {ours_ips / ref_ips:.2f}x; augmentation {t_aug / t_ours:.1%} of a step; "
          f"BatchFormer step ratio {t_bf / t_ours:.3f}", flush=True)

    # exported backbone vs a plain torchvision model: a width-64 method WITH BatchFormer is
    # exported and loaded into torchvision's own resnet (same stem): identical outputs, cost
    import torchvision

    from sslkit import config
    from sslkit.export import backbone_state_dict
    m = cfg.model
    net = build_method(config.load(args.config, [*args.overrides, "model.width=64",
                                                 "batchformer.enabled=true"])).eval()
    exported = net.backbone.to(dev)
    tv = getattr(torchvision.models, m.backbone)()
    c = cfg.data.channels
    tv.conv1 = (nn.Conv2d(c, 64, 3, 1, 1, bias=False) if m.cifar_stem
                else nn.Conv2d(c, 64, 7, 2, 3, bias=False))
    if not m.maxpool:
        tv.maxpool = nn.Identity()
    tv.fc = nn.Identity()
    tv.load_state_dict(backbone_state_dict(net.state_dict()), strict=True)
    tv = tv.to(dev).eval()
    x = ds.images[:64].to(dev).float() / 255

    ratio, same = export_vs_torchvision(exported, tv, x, dev,
                                        lambda: autocast(dev, precision), args.steps,
                                        args.blocks)

    if not args.no_write:
        versions = torch_kornia_versions()
        model = (f"{cfg.data.name}: {m.backbone} w{m.width}, {c}x{cfg.data.image_size}px, "
                 f"{cfg.method.name}")
        row = (f"| {datetime.date.today().isoformat()} | {where} | {dev.type} | {versions} | "
               f"{model} | {cfg.train.batch_size} | {precision} | {args.workers} | "
               f"{ours_ips:,.0f} | {ref_ips:,.0f} | {ours_ips / ref_ips:.2f}x | "
               f"{t_aug / t_ours:.1%} | {t_bf / t_ours:.3f} | {ratio:.3f} (identical outputs) |")
        write_rows(SECTION, HEADER, [row])
        print("added a row to docs/benchmarks.md")


if __name__ == "__main__":
    main()
