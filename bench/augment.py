"""Batched kornia two-view augmentation vs a per-image torchvision.transforms.v2 pipeline.

Both make two MoCo-v2 "aug+" views of every image of a uint8 batch, with the same
parameters (RandomResizedCrop scale (0.2, 1) ratio (3/4, 4/3); ColorJitter 0.4/0.4/0.4/0.1
p=0.8; grayscale p=0.2; Gaussian blur sigma [0.1, 2] p=0.5 with the same kernel size;
horizontal flip; to float; normalise), on the same device:

* sslkit: ``build_views("mocov2", S)`` on the whole batch (one kornia chain per view);
* torchvision: ``transforms.v2.Compose`` applied image by image (what a DataLoader worker
  runs), twice per image, then stacked.

Each configuration is warmed up once and timed ``--repeats`` times, the two pipelines
alternately (so both see the same background load); the median is reported
as images per second (an image = its two views) and the ratio kornia / torchvision. A row per
configuration is added to docs/benchmarks.md (``--no-write`` to skip).

    python bench/augment.py                    # CPU, sizes 32 and 96, batch 256
    python bench/augment.py --device cuda      # on a GPU
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, timed_pair, write_rows  # noqa: E402

from sslkit.augment import blur_kernel_size, build_views, resolve_params  # noqa: E402

SECTION = "## Augmentation: batched kornia vs per-image torchvision (`bench/augment.py`)"
HEADER = ("| date | machine | device | torch / kornia / torchvision | threads | size | batch "
          "| kornia img/s | torchvision img/s | ratio |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def torchvision_pipeline(size: int, mean, std):
    from torchvision.transforms import v2

    p = resolve_params("mocov2")
    k = blur_kernel_size(size)
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=p["crop_scale"], ratio=p["crop_ratio"], antialias=True),
        v2.RandomApply([v2.ColorJitter(p["brightness"], p["contrast"], p["saturation"], p["hue"])],
                       p=p["jitter_p"]),
        v2.RandomGrayscale(p=p["grayscale_p"]),
        v2.RandomApply([v2.GaussianBlur(k, sigma=p["blur_sigma"])], p=p["blur_p"][0]),
        v2.RandomHorizontalFlip(p=p["flip_p"]),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])










def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if dev == "auto" else dev)
    import kornia
    import torchvision

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    versions = " / ".join(v.split("+")[0] for v in (torch.__version__, kornia.__version__,
                                                      torchvision.__version__))
    rows = []
    where = machine(device)  # before timing: the load average is the other jobs'
    for size in args.sizes:
        torch.manual_seed(0)
        x = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8, device=device)
        views = build_views("mocov2", size, mean, std).to(device)
        per_image = torchvision_pipeline(size, mean, std)

        def run_kornia():
            return views(x)

        def run_torchvision():
            v1 = torch.stack([per_image(img) for img in x])
            v2 = torch.stack([per_image(img) for img in x])
            return v1, v2

        a, b = run_kornia(), run_torchvision()
        assert a[0].shape == b[0].shape == (args.batch, 3, size, size)
        tk, tt = timed_pair(run_kornia, run_torchvision, device, args.repeats)
        k_ips, t_ips = args.batch / tk, args.batch / tt
        print(f"{device.type} size {size} batch {args.batch}: kornia {k_ips:,.0f} img/s, "
              f"torchvision per-image {t_ips:,.0f} img/s, ratio {k_ips / t_ips:.1f}x", flush=True)
        rows.append(f"| {datetime.date.today().isoformat()} | {where} | {device.type} | "
                    f"{versions} | {torch.get_num_threads()} | {size} | {args.batch} | "
                    f"{k_ips:,.0f} | {t_ips:,.0f} | {k_ips / t_ips:.1f}x |")
    if not args.no_write:
        write_rows(SECTION, HEADER, rows, Path(args.out))
        print(f"added {len(rows)} row(s) to {args.out}")


if __name__ == "__main__":
    main()
