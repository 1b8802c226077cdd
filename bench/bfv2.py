"""BatchFormerV2's step cost on a ViT, side by side in one run (rows go to docs/benchmarks.md).

The engine's own MoCo-v3 training steps (``Trainer.train_step``: kornia views, forward,
backward, AdamW, EMA, as ``run_pretrain.py`` runs them, on synthetic data of the demo's
shape) of the same small ViT without a BatchFormer, with BatchFormer v1 (on the pooled features) and with
BatchFormerV2 (on the tokens after ``--insert-after``), timed in alternating blocks after a
warm-up, median of ``--blocks``. The measured ratios are set against the ratio expected from
multiply-accumulates (MACs) and where the module sits: with the insertion after block i of d,
the d-1-i later blocks and the heads run on 2B rows, and the BF layer is added::

    plain = 3 (d T + P) + E + M          (trained parts x3: forward + backward; the frozen
    v2    = plain + 3 ((d-1-i) T + P + F)  patch embedding E and the momentum forward M x1)
    v1    = plain + 3 (P + F1)

per image and view, T = 12 L C^2 + 2 L^2 C (one block: qkv + out projections, attention,
MLP 4C), F = 6 L C^2 + 2 B L C (the BF layer on L tokens: projections, attention over the B
samples at each position, FFN of width C), F1 = 6 C^2 + 2 B C (v1's on one vector), P the
heads on the class token, M = E + d T + projector. MACs leave out the norms, softmax, GELU,
dropout, casts, augmentation and optimizer, which the measured ratio includes; so a second
expectation uses the measured cost (forward + backward, both views) of what v2 adds: the
d-1-i later blocks on 2B rows instead of B, the BF layer on B rows, the heads on 2B rows::

    v2 / plain = 1 + 2 ((d-1-i) (block(2B) - block(B)) + BF(B) + heads(2B) - heads(B)) / plain
Also: the v2 model after its
steps, exported and loaded into torchvision's own ViT: identical outputs, inference ratio.
Defaults are configs/demo_vit.yaml's model (ViT-Tiny width, 4 blocks, 7x7 patches, 28x28
single-channel, batch 256, the precision auto picks: bf16 where native, else fp32).

    python bench/bfv2.py                  # CPU, ~3 min on 2 cores
    python bench/bfv2.py --threads 1 --clock cpu   # on a machine shared with other jobs
    python bench/bfv2.py --depth 12 --insert-after 8 --image-size 32 --patch 4   # the recipe's ratio shape
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import (EngineSteps, bench_precision, bench_trainer,  # noqa: E402
                    export_vs_torchvision, machine, timed_alternately, torch_kornia_versions,
                    write_rows)
from sslkit.export import backbone_state_dict  # noqa: E402
from sslkit.models.batchformer import default_insert_after  # noqa: E402
from sslkit.train.runtime import autocast  # noqa: E402

SECTION = "## BatchFormerV2 on a ViT: step cost (`bench/bfv2.py`)"
HEADER = ("| date | machine | device | torch / kornia | model | batch | precision "
          "| threads, clock | insert_after | plain s/step | BFv1 ratio | BFv1 expected (MACs) "
          "| BFv2 ratio | BFv2 expected (parts) | BFv2 expected (MACs) "
          "| export / torchvision inference |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def cpu_timed_alternately(fns, device: torch.device, repeats: int) -> list[float]:
    """As common.timed_alternately, on this process's CPU time (``time.process_time``)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            t0 = time.process_time()
            fn()
            out.append(time.process_time() - t0)
    return [statistics.median(t) for t in times]


def make_items(args, version: str | None) -> list[str]:
    items = [f"data.image_size={args.image_size}", f"data.channels={args.channels}",
             "data.name=synthetic", f"model.backbone={args.model}", f"model.vit_depth={args.depth}",
             f"model.patch_size={args.patch}", "method.name=mocov3", "method.proj_dim=128",
             "method.proj_hidden_dim=512", "method.pred_hidden_dim=512", "optim.name=adamw",
             "optim.lr=5e-4", f"train.batch_size={args.batch}",
             f"batchformer.enabled={'false' if version is None else 'true'}",
             f"batchformer.version={version or 'v1'}",
             f"batchformer.insert_after=[{args.insert_after}]", "batchformer.lr_scale=0.5",
             "batchformer.weight_decay=0", f"data.synthetic_train={4 * args.batch}",
             "data.num_workers=0", "train.epochs=100"]
    return items + ([f"run.num_threads={args.threads}"] if args.threads else [])


def expected_ratios(args, dim: int) -> tuple[float, float]:
    """(v2, v1) step-cost ratios from MACs per image and view (see the module docstring)."""
    d, c, b, i = args.depth, dim, args.batch, args.insert_after
    n = (args.image_size // args.patch) ** 2
    tokens = n + 1
    block = 12 * tokens * c * c + 2 * tokens * tokens * c
    embed = n * c * args.patch ** 2 * args.channels
    h, o = 512, 128
    projector = c * h + h * h + h * o  # 3 layers (ViT)
    heads = projector + o * h + h * o  # + the predictor
    bf_tokens = 6 * tokens * c * c + 2 * b * tokens * c
    bf_vector = 6 * c * c + 2 * b * c
    plain = 3 * (d * block + heads) + embed + (embed + d * block + projector)
    v2 = plain + 3 * ((d - 1 - i) * block + heads + bf_tokens)
    v1 = plain + 3 * (heads + bf_vector)
    return v2 / plain, v1 / plain


def component_times(args, m, dev: torch.device, timer) -> dict[str, float]:
    """Seconds of forward + backward of the parts BatchFormerV2 adds to a step, at the step's
    precision: one ViT block on B and on 2B rows, the BF layer on B rows (dropout on), the
    heads on B and on 2B rows."""
    vit, bf = m.backbone, m.batchformer
    b, c = args.batch, vit.hidden_dim
    tokens = (args.image_size // args.patch) ** 2 + 1
    g = torch.Generator().manual_seed(0)
    t1 = torch.randn(b, tokens, c, generator=g).to(dev).requires_grad_(True)
    t2 = torch.randn(2 * b, tokens, c, generator=g).to(dev).requires_grad_(True)
    h1 = torch.randn(b, c, generator=g).to(dev).requires_grad_(True)
    h2 = torch.randn(2 * b, c, generator=g).to(dev).requires_grad_(True)
    block = vit.encoder.layers[-1]

    def fb(fn, x):
        def run():
            for _ in range(args.steps):
                with autocast(dev, args.precision):
                    y = fn(x)
                y.float().sum().backward()
        return run

    names = ["block_B", "block_2B", "bf_B", "heads_B", "heads_2B"]
    runs = [fb(block, t1), fb(block, t2), fb(lambda x: bf.mix_tokens(0, x)[b:], t1),
            fb(m._heads, h1), fb(m._heads, h2)]
    return dict(zip(names, timer(runs, dev, args.blocks)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="vit_tiny")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--patch", type=int, default=7)
    ap.add_argument("--insert-after", type=int, default=None,
                    help="0-based block (default: default_insert_after(depth))")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                    help="auto: bf16 where the device computes it natively, else fp32")
    ap.add_argument("--steps", type=int, default=2, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time (with --threads 1, robust to other "
                         "jobs on a shared machine)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.insert_after is None:
        args.insert_after = default_insert_after(args.depth)[0]
    dev = torch.device(args.device)
    precision = bench_precision(args.precision, dev)
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    timer = timed_alternately if args.clock == "wall" else cpu_timed_alternately
    where = machine(dev)
    trainers = {version: bench_trainer(make_items(args, version), dev, precision)
                for version in (None, "v1", "v2")}
    runners = {version: EngineSteps(t) for version, t in trainers.items()}

    def steps(version):
        return lambda: runners[version].run(args.steps)

    t_plain, t_v1, t_v2 = timer([steps(None), steps("v1"), steps("v2")], dev,
                                            args.blocks)
    exp_v2, exp_v1 = expected_ratios(args, trainers[None].method.backbone.hidden_dim)
    # the same ratio from the measured cost of what v2 adds: the later blocks on 2B rows
    # instead of B, the BF layer, the heads on 2B rows (forward + backward, two views)
    parts = component_times(args, trainers["v2"].method, dev, timer)
    after = args.depth - 1 - args.insert_after
    added = 2 * (after * (parts["block_2B"] - parts["block_B"]) + parts["bf_B"]
                 + parts["heads_2B"] - parts["heads_B"])
    exp_parts = 1 + added / t_plain
    print(f"plain {t_plain / args.steps:.3f} s/step ({args.clock}); BFv1 {t_v1 / t_plain:.3f}x "
          f"(MACs: {exp_v1:.3f}); BFv2 after block {args.insert_after} of {args.depth} "
          f"{t_v2 / t_plain:.3f}x (expected from its parts {exp_parts:.3f}, from MACs "
          f"{exp_v2:.3f})", flush=True)
    print("parts (s per step, fwd+bwd, one view): " + ", ".join(
        f"{k} {v / args.steps:.4f}" for k, v in parts.items()), flush=True)

    # the trained v2 model's backbone, exported and loaded into torchvision's own ViT
    from torchvision.models.vision_transformer import VisionTransformer

    m = trainers["v2"].method.eval()
    exported = m.backbone
    tv = VisionTransformer(image_size=args.image_size, patch_size=args.patch,
                           num_layers=args.depth, num_heads=exported.encoder.layers[0]
                           .self_attention.num_heads, hidden_dim=exported.hidden_dim,
                           mlp_dim=exported.mlp_dim)
    tv.conv_proj = nn.Conv2d(args.channels, exported.hidden_dim, args.patch, args.patch)
    tv.heads = nn.Identity()
    tv.load_state_dict(backbone_state_dict(m.state_dict()), strict=True)
    tv = tv.to(dev).eval()
    x = trainers["v2"].train_set.images[:64].to(dev).float() / 255

    ratio, same = export_vs_torchvision(exported, tv, x, dev,
                                        lambda: autocast(dev, precision), args.steps,
                                        args.blocks, timer)

    if not args.no_write:
        model = (f"{args.model} d{args.depth} p{args.patch}, {args.channels}x"
                 f"{args.image_size}px")
        row = (f"| {datetime.date.today().isoformat()} | {where} | {dev.type} | "
               f"{torch_kornia_versions()} | {model} | {args.batch} | {precision} | "
               f"{torch.get_num_threads()}, {args.clock} | "
               f"[{args.insert_after}] | {t_plain / args.steps:.3f} | {t_v1 / t_plain:.3f} | "
               f"{exp_v1:.3f} | {t_v2 / t_plain:.3f} | {exp_parts:.3f} | {exp_v2:.3f} | "
               f"{ratio:.3f} (identical outputs) |")
        write_rows(SECTION, HEADER, [row])
        print("added a row to docs/benchmarks.md")


if __name__ == "__main__":
    main()
