"""Summarise the runs of bench/results_fmnist.sh as the Markdown table of docs/results.md.

    python bench/results_table.py runs/results_fmnist --epochs 6

Each row is one model over its seeds: mean and range [min, max] of kNN top-1 (k=20 at
T=0.07 and k=200 at T=0.1) and of the linear probe's top-1 on the Fashion-MNIST test set
(each run's wall-clock pretraining time is in its ``pretrain_seconds.txt``). With
``--write-doc`` (the demo budget, 6 epochs) the table replaces the block between the two
markers in docs/results.md; otherwise it goes to ``<runs>/results.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
BEGIN, END = "<!-- results-fmnist:begin -->", "<!-- results-fmnist:end -->"
ROWS = [  # (label, run directory pattern with {s} for the seed)
    ("raw pixels (normalised)", "baselines_s{s}/baseline_raw_pixels"),
    ("random init (ResNet-18 w16)", "baselines_s{s}/baseline_random_init"),
    ("MoCo-v2", "demo_s{s}"),
    ("MoCo-v2 + BatchFormer", "demo_bf_s{s}"),
    ("MoCo-v3", "demo_mocov3_s{s}"),
    ("MoCo-v3 + BatchFormer", "demo_mocov3_bf_s{s}"),
]


def knn_top1(result: dict, k: int, t: float) -> float:
    for row in result["knn"]:
        if row["k"] == k and abs(row["t"] - t) < 1e-9:
            return row["top1"]
    raise KeyError(f"no kNN result for k={k}, T={t}")


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} [{min(values):.2f}, {max(values):.2f}]"


def table(out: Path, seeds: list[int]) -> str:
    lines = ["| model | seeds | kNN k=20, T=0.07 | kNN k=200, T=0.1 | linear |",
             "|---|---|---|---|---|"]
    for label, pattern in ROWS:
        k20, k200, lin, found = [], [], [], []
        for s in seeds:
            d = out / pattern.format(s=s)
            if not (d / "eval.json").exists():
                continue
            r = json.loads((d / "eval.json").read_text())
            k20.append(knn_top1(r, 20, 0.07))
            k200.append(knn_top1(r, 200, 0.1))
            lin.append(r["linear_top1"])
            found.append(s)
        if not found:
            continue
        lines.append(f"| {label} | {','.join(map(str, found))} | {cell(k20)} | {cell(k200)} "
                     f"| {cell(lin)} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seeds", default="0 1")
    ap.add_argument("--write-doc", action="store_true",
                    help="put the table into docs/results.md (the demo budget, 6 epochs)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split()]
    text = table(args.runs, seeds)
    print(text)
    if args.write_doc and args.epochs == 6:
        doc = DOC.read_text() if DOC.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
        if BEGIN not in doc or END not in doc:
            print(f"error: {DOC} lacks the {BEGIN} / {END} markers", file=sys.stderr)
            return 2
        head, rest = doc.split(BEGIN, 1)
        doc = head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1]
        DOC.write_text(doc)
        print(f"updated {DOC}")
    else:
        (args.runs / "results.md").write_text(text + "\n")
        print(f"wrote {args.runs / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
