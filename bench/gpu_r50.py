"""GPU benchmark: a MoCo-v2 ResNet-50 step at 224 px against a supervised ResNet-50 step.

Both run on the same GPU, in the precision ``run.precision: auto`` picks (bf16 autocast on a
GPU that supports it) with channels_last, with the same batch of uint8 images already on the
device, timed in alternating blocks. The MoCo-v2 step is the engine's
own (``Trainer.train_step``, what ``run_pretrain.py`` runs): the two aug+ views made in batch
by kornia on the GPU, the query encoder's forward and backward, the key encoder's forward,
the queue, the non-finite guard, SGD, the LR schedule and the momentum update. The supervised step
is a plain torchvision ResNet-50 with a random flip, cross-entropy and SGD. MoCo-v2 does
about 1.33x the supervised step's arithmetic (an extra forward for the key), so a ratio
near 0.75 means the pipeline adds little; the goal is >= 0.7.

    python bench/gpu_r50.py                 # needs a CUDA GPU; ~2 min on an H100
    python bench/gpu_r50.py --batch 128 --no-write
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

from common import (EngineSteps, bench_precision, bench_trainer, machine,  # noqa: E402
                    timed_alternately, torch_kornia_versions, write_rows)
from sslkit.train.runtime import autocast  # noqa: E402

SECTION = "## GPU: MoCo-v2 ResNet-50 against supervised ResNet-50 (`bench/gpu_r50.py`)"
HEADER = ("| date | GPU | torch / kornia | batch | precision | MoCo-v2 img/s | supervised img/s "
          "| ratio (goal >= 0.7) |\n|---|---|---|---|---|---|---|---|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--device", default="cuda", help="cpu only to smoke-test the script")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: bench/gpu_r50.py needs a CUDA GPU; none is available here")
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cl = torch.channels_last
    precision = bench_precision("auto", dev)  # bf16 on a GPU that supports it

    trainer = bench_trainer([
        "data.name=synthetic", "data.image_size=224", "data.channels=3",
        f"data.synthetic_train={2 * args.batch}", "data.synthetic_test=10",
        "model.backbone=resnet50", "model.cifar_stem=false", "method.name=mocov2",
        "method.queue_size=65536", "method.temperature=0.2", "method.bn_splits=8",
        "run.channels_last=true", "optim.lr=0.03", "train.epochs=100",
        f"train.batch_size={args.batch}"], dev, precision)

    import torchvision
    sup = torchvision.models.resnet50(num_classes=1000).to(dev).to(memory_format=cl).train()
    sup_opt = torch.optim.SGD(sup.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, 224, 224), dtype=torch.uint8,
                           generator=g).to(dev)
    labels = torch.randint(0, 1000, (args.batch,), generator=g).to(dev)

    moco = EngineSteps(trainer, (images, labels % 10))

    def moco_block():
        moco.run(args.steps)

    def sup_block():
        for _ in range(args.steps):
            x = (images.float() / 255 - mean) / std
            flip = torch.rand(x.shape[0], device=dev) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x).contiguous(memory_format=cl)
            with autocast(dev, precision):
                loss = nn.functional.cross_entropy(sup(x), labels)
            sup_opt.zero_grad(set_to_none=True)
            loss.backward()
            sup_opt.step()

    t_moco, t_sup = timed_alternately([moco_block, sup_block], dev, args.blocks)
    img = args.steps * args.batch
    moco_ips, sup_ips = img / t_moco, img / t_sup
    print(f"MoCo-v2 R50 {moco_ips:.0f} img/s, supervised R50 {sup_ips:.0f} img/s, "
          f"ratio {moco_ips / sup_ips:.2f}", flush=True)
    if not args.no_write and dev.type == "cuda":
        versions = torch_kornia_versions()
        row = (f"| {datetime.date.today().isoformat()} | {machine(dev)} | {versions} | "
               f"{args.batch} | {precision}, channels_last | {moco_ips:,.0f} | {sup_ips:,.0f} | "
               f"{moco_ips / sup_ips:.2f} |")
        write_rows(SECTION, HEADER, [row])
        print("added a row to docs/benchmarks.md")


if __name__ == "__main__":
    main()
