"""Preview the augmentation of a config: a PNG grid of N training images in three labelled
rows (the originals, view 1, view 2), made by the very pipeline pretraining uses for that
config (same dataset, same crops, same device augmentation; :mod:`sslkit.views.pipeline`).

    python -m sslkit.preview --config configs/demo.yaml --n 8 --out grid.png

For ImageFolder data cropped from the original image, the top row shows each whole image
with the boxes of view 1 (red) and view 2 (blue) drawn on it. A bad config, missing data or
an unwritable output is one line ``error: ...`` (exit 2).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from sslkit import config as config_mod
from sslkit.views.grid import augmentation_grid
from sslkit.errors import OneLineParser, UserError, guard
from sslkit.methods.resolve import resolved
from sslkit.views.pipeline import build_pretrain_input
from sslkit.train.runtime import configure_cpu, resolve_device, seed_everything


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m sslkit.preview",
                      description="Write a PNG grid of training images and their two "
                                  "augmented views, through the pretraining pipeline of a "
                                  "config.")
    p.add_argument("--config", metavar="PATH",
                   help=f"YAML config (default: {config_mod.DEMO_CONFIG})")
    p.add_argument("--set", metavar="KEY=VALUE", nargs="+", action="append", default=[],
                   dest="overrides", help="override config keys (repeatable), as in "
                                          "run_pretrain.py")
    p.add_argument("--n", type=int, default=8, help="number of images (default 8)")
    p.add_argument("--out", metavar="PNG", default="augment_preview.png",
                   help="output PNG (default augment_preview.png)")
    return p


def write_preview(cfg: config_mod.Config, n: int, out: Path) -> int:
    """Render ``n`` images of ``cfg``'s training set and their views into ``out`` (PNG);
    returns the number of images shown."""
    if n < 1:
        raise UserError(f"--n {n} is invalid: give at least 1 image")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the preview is a PNG; name it e.g. grid.png")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {out}: '{parent}' is not a writable directory")
    cfg = resolved(cfg)  # the preset and parameters a run of this config takes
    configure_cpu(cfg.run)
    seed_everything(cfg.run.seed)
    pipeline = build_pretrain_input(cfg, resolve_device(cfg.run), loader=False)
    indices = list(range(min(n, len(pipeline.base))))
    grid = augmentation_grid(*pipeline.preview(indices, cfg.run.seed))
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    try:
        Image.fromarray(arr).save(out)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e})") from None
    return len(indices)


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    path = args.config if args.config is not None else config_mod.demo_config_path()
    cfg = config_mod.load(path, [item for group in args.overrides for item in group])
    shown = write_preview(cfg, args.n, Path(args.out))
    print(f"wrote {args.out}: {shown} images in three rows (original, view 1, view 2)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return guard(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
