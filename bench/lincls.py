"""Linear probe: cached mode vs the standard (papers') mode at equal epochs, same backbone.

Same frozen backbone, same data, same number of epochs, same batch size:

* standard: ``linear_eval.standard.standard_probe`` — every epoch runs the backbone on fresh
  random crops (+ flip) of the train images; one fc at ``--std-lr`` (x batch/256), the
  ``eval.schedule`` of the config (step at 60 % / 80 %);
* cached: ``extract_features`` once (train + test, centre view), then
  ``linear_eval.cached.cached_probe`` — the whole eval.lr_grid x eval.wd_grid (18 heads) in one
  pass per epoch, selection on 10 % of train, refit of the selected head on all of train.

Times include the feature extraction of each mode (and the test pass). Default: Fashion-MNIST
(``data.root`` or the Debian package), a stratified ``--train`` subset, ``--test`` test
images, the demo's backbone (ResNet-18, CIFAR stem, width 16, 1 channel, 128-d) randomly
initialised (``--checkpoint`` to use a trained ``backbone.pt``/``last.pt`` instead), the
precision auto picks (bf16 where the CPU computes it natively, else fp32). A row goes to
docs/benchmarks.md (``--no-write`` to skip).

    python bench/lincls.py                                  # ~5 min on 2 cores
    python bench/lincls.py --train 2000 --test 1000 --epochs 5 --no-write   # quick
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import bench_precision, machine, write_rows  # noqa: E402

from linear_eval.cached import cached_probe  # noqa: E402
from linear_eval.standard import standard_probe  # noqa: E402
from linear_eval.transforms import ProbeTrainTransform  # noqa: E402
from sslkit import config  # noqa: E402
from sslkit.augment import CenterView  # noqa: E402
from sslkit.evaluation.features import extract_features  # noqa: E402

SECTION = "## Linear probe: cached vs standard mode (`bench/lincls.py`)"
HEADER = ("| date | machine | threads | torch | data (train / test) | backbone | epochs | "
          "standard s (one run) | standard best top-1 (lr; tried) | cached s | "
          "cached top-1 (lr, wd) | speed-up |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")






def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="fashion_mnist")
    ap.add_argument("--root", default="data")
    ap.add_argument("--train", type=int, default=10_000, help="stratified train subset")
    ap.add_argument("--test", type=int, default=5_000, help="first N test images")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--std-lrs", type=float, nargs="+", default=[0.3, 3.0, 30.0],
                    help="standard probe LRs (batch 256), one full run each; the table "
                         "reports the median run time and the best accuracy")
    ap.add_argument("--no-aug-run", action="store_true",
                    help="also one standard run at the best LR that trains on the centre view "
                         "(no crop/flip): separates the effect of augmentation from the mode")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                    help="auto: bf16 where the device computes it natively, else fp32")
    ap.add_argument("--checkpoint", default=None, help="trained backbone.pt / last.pt")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from sslkit.data import build_dataset, normalization, stratified_subset
    from sslkit.models.backbones import build_backbone

    channels, size = (1, 28) if args.data == "fashion_mnist" else (3, 32)
    train = build_dataset(args.data, args.root, "train", channels=channels)
    test = build_dataset(args.data, args.root, "test", channels=channels)
    keep = stratified_subset(train.labels, args.train, seed=0)
    xtr, ytr = train.images[keep], train.labels[keep]
    xte, yte = test.images[:args.test], test.labels[:args.test]
    classes = int(train.num_classes)
    mean, std = normalization(args.data, channels)
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18", in_channels=channels, cifar_stem=True, width=16)
    what = "ResNet-18 w16 random init"
    if args.checkpoint:
        from sslkit.io.checkpoint import load_into
        from sslkit.export import read_backbone_source
        state, _ = read_backbone_source(args.checkpoint)
        load_into(backbone, state, args.checkpoint, "backbone")
        what = f"ResNet-18 w16 from {Path(args.checkpoint).name}"
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    dev = torch.device("cpu")
    precision = bench_precision(args.precision, dev)
    cfg = config.build({"eval": {"epochs": args.epochs, "batch_size": args.batch}}).eval
    eval_tf = CenterView(size, channels, mean, std)
    train_tf = ProbeTrainTransform(size, mean, std, channels)

    t0 = time.perf_counter()
    ftr, _ = extract_features(backbone, (xtr, ytr), dev, precision, eval_tf, 512)
    fte, _ = extract_features(backbone, (xte, yte), dev, precision, eval_tf, 512)
    extract_s = time.perf_counter() - t0
    cached = cached_probe(ftr, ytr, fte, yte, classes, cfg, seed=0)
    cached_s = time.perf_counter() - t0
    sel = cached["selected"]
    print(f"cached: {cached_s:.1f} s (extraction {extract_s:.1f} s, grid "
          f"{cached['timings']['grid_s']:.1f} s, refit+test "
          f"{cached['timings']['refit_and_test_s']:.1f} s), top-1 {cached['linear_top1']:.2f} "
          f"(lr {sel['lr']:g}, wd {sel['wd']:g})", flush=True)

    runs = []
    for lr in args.std_lrs:
        c = dataclasses.replace(cfg, lr=lr)
        t0 = time.perf_counter()
        r = standard_probe(backbone, dim, classes, (xtr, ytr), (xte, yte), c,
                           train_transform=train_tf, test_transform=eval_tf, device=dev,
                           precision=precision, seed=0, progress=False)
        runs.append((time.perf_counter() - t0, r["linear_top1"], lr))
        print(f"standard lr {lr:g}: {runs[-1][0]:.1f} s, top-1 {r['linear_top1']:.2f}", flush=True)
    std_s = statistics.median(t for t, _, _ in runs)
    _, std_top1, std_lr = max(runs, key=lambda x: x[1])
    print(f"standard: {std_s:.1f} s per run, best top-1 {std_top1:.2f} (lr {std_lr:g}); "
          f"speed-up vs one standard run {std_s / cached_s:.1f}x", flush=True)
    tried = ", ".join(f"{x:g}" for x in args.std_lrs)
    no_aug = ""
    if args.no_aug_run:
        r = standard_probe(backbone, dim, classes, (xtr, ytr), (xte, yte),
                           dataclasses.replace(cfg, lr=std_lr), train_transform=eval_tf,
                           test_transform=eval_tf, device=dev, precision=precision, seed=0)
        no_aug = f"; without crop/flip {r['linear_top1']:.2f}"
        print(f"standard lr {std_lr:g} trained on the centre view: top-1 "
              f"{r['linear_top1']:.2f}", flush=True)
    if not args.no_write:
        row = (f"| {datetime.date.today().isoformat()} | {machine()} | "
               f"{torch.get_num_threads()} | {torch.__version__.split('+')[0]} | "
               f"{args.data} ({len(ytr)} / {len(yte)}) | {what}, {dim}-d, {precision} | "
               f"{args.epochs} | {std_s:.1f} | "
               f"{std_top1:.2f} ({std_lr:g}; tried {tried}{no_aug}) | "
               f"{cached_s:.1f} | {cached['linear_top1']:.2f} ({sel['lr']:g}, {sel['wd']:g}) | "
               f"{std_s / cached_s:.1f}x |")
        write_rows(SECTION, HEADER, [row], Path(args.out))
        print(f"added a row to {args.out}")


if __name__ == "__main__":
    main()
