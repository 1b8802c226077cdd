"""Summarise the runs of bench/results_fmnist.sh (or bench/results_vit_fmnist.sh with
``--table vit``, bench/results_bf_fmnist.sh with ``--table bf``, bench/results_bf_schemes.sh
with ``--table bf-schemes``, bench/results_demo_recipe.sh with ``--table demo-recipe``) as
the Markdown tables of docs/results.md.

    python bench/results_table.py runs/results_fmnist --epochs 6
    python bench/results_table.py runs/results_vit_fmnist --table vit --epochs 4

Each row is one model over its seeds: mean and range [min, max] of kNN top-1 (k=20 at
T=0.07 and k=200 at T=0.1) and of the linear probe's top-1 on the Fashion-MNIST test set
(each run's wall-clock pretraining time is in its ``pretrain_seconds.txt``); the bf-schemes
table adds the training statistics of the plain query stream at the end of training. With
``--write-doc`` at the table's budget (6 epochs; ViT: 4; BatchFormer: 3; BatchFormer schemes:
6; the demo's recipe: 9) the table replaces the block
between its two markers in docs/results.md; otherwise it goes to ``<runs>/results.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
TABLES = {  # name -> (begin marker, end marker, demo-budget epochs, rows)
    "fmnist": ("<!-- results-fmnist:begin -->", "<!-- results-fmnist:end -->", 6, [
        # (label, run directory pattern with {s} for the seed)
        ("raw pixels (normalised)", "baselines_s{s}/baseline_raw_pixels"),
        ("random init (ResNet-18 w16)", "baselines_s{s}/baseline_random_init"),
        ("MoCo-v2", "demo_s{s}"),
        ("MoCo-v2 + BatchFormer", "demo_bf_s{s}"),
        ("MoCo-v3", "demo_mocov3_s{s}"),
        ("MoCo-v3 + BatchFormer", "demo_mocov3_bf_s{s}"),
    ]),
    "demo-recipe": ("<!-- results-demo-recipe:begin -->", "<!-- results-demo-recipe:end -->",
                    9, [
        ("the demo, native bf16 (this CPU, auto)", "native/demo_s{s}"),
        ("the demo in fp32 on this CPU (what auto picks without native bf16)",
         "fp32/demo_s{s}"),
        ("the demo under the AVX2-only stand-in (auto: fp32)", "avx2/demo_s{s}"),
        ("6 epochs, native bf16", "native/epochs6_s{s}"),
        ("6 epochs, AVX2-only stand-in", "avx2/epochs6_s{s}"),
        ("no stem max-pool (the former demo), native bf16", "native/nomaxpool_s{s}"),
    ]),
    "bf": ("<!-- results-bf-fmnist:begin -->", "<!-- results-bf-fmnist:end -->", 3, []),
    "bf-schemes": ("<!-- results-bf-schemes:begin -->", "<!-- results-bf-schemes:end -->", 6, []),
    "vit": ("<!-- results-vit-fmnist:begin -->", "<!-- results-vit-fmnist:end -->", 4, [
        ("random init (ViT-Tiny width, 4 blocks)", "baselines_s{s}/baseline_random_init"),
        ("MoCo-v3 ViT", "demo_vit_s{s}"),
        ("MoCo-v3 ViT + BatchFormer (v1)", "demo_vit_bf_s{s}"),
        ("MoCo-v3 ViT + BatchFormerV2", "demo_vit_bfv2_s{s}"),
    ]),
}


def knn_top1(result: dict, k: int, t: float) -> float:
    for row in result["knn"]:
        if row["k"] == k and abs(row["t"] - t) < 1e-9:
            return row["top1"]
    raise KeyError(f"no kNN result for k={k}, T={t}")


def cell(values: list[float], digits: int = 2) -> str:
    """Mean [min, max] over seeds (the mean alone for one seed; '-' for none)."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def table(out: Path, seeds: list[int], rows: list[tuple[str, str]]) -> str:
    lines = ["| model | seeds | kNN k=20, T=0.07 | kNN k=200, T=0.1 | linear |",
             "|---|---|---|---|---|"]
    for label, pattern in rows:
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


BF_REGIMES = [("full", "full data"), ("lt", "long-tailed r=100"),
              ("low", "10 % of the data, 10x epochs")]
BF_MODELS = [("raw pixels (normalised)", "baselines_s{s}/baseline_raw_pixels"),
             ("random init (ResNet-18 w16)", "baselines_s{s}/baseline_random_init"),
             ("MoCo-v2", "plain_s{s}"),
             ("MoCo-v2 + BF, plain keys", "bf_plain_s{s}"),
             ("MoCo-v2 + BF, keys of both streams", "bf_both_s{s}")]


def bf_table(out: Path, seeds: list[int]) -> str:
    """The regimes x models table of bench/results_bf_fmnist.sh, with the few-shot group."""
    lines = ["| regime | model | seeds | kNN k=20, T=0.07 | kNN k=200, T=0.1 | linear "
             "| few-shot kNN | few-shot linear |", "|---|---|---|---|---|---|---|---|"]
    for regime, label_regime in BF_REGIMES:
        for label, pattern in BF_MODELS:
            cols: dict[str, list[float]] = {k: [] for k in ("k20", "k200", "lin", "fk", "fl")}
            found = []
            for s in seeds:
                path = out / regime / pattern.format(s=s) / "eval.json"
                if not path.exists():
                    continue
                r = json.loads(path.read_text())
                cols["k20"].append(knn_top1(r, 20, 0.07))
                cols["k200"].append(knn_top1(r, 200, 0.1))
                cols["lin"].append(r["linear_top1"])
                if "few" in r:
                    cols["fk"].append(r["few"]["knn"])
                    cols["fl"].append(r["few"]["linear"])
                found.append(s)
            if found:
                lines.append(f"| {label_regime} | {label} | {','.join(map(str, found))} | "
                             + " | ".join(cell(cols[k]) for k in ("k20", "k200", "lin", "fk",
                                                                  "fl")) + " |")
    return "\n".join(lines)


BF_SCHEME_REGIMES = {"lt": "long-tailed r=100", "full": "full data"}
BF_SCHEME_MODELS = [("random init (ResNet-18 w16)", "baselines_s{s}/baseline_random_init"),
                    ("MoCo-v3", "mocov3_s{s}"),
                    ("+ BF, sslkit's scheme (plain keys, trained, mean, joint BN)",
                     "bf_sslkit_s{s}"),
                    ("+ BF, head_bn: per_stream", "bf_per_stream_s{s}"),
                    ("+ BF, the authors' scheme (keys both, frozen, sum)", "bf_authors_s{s}")]


def end_of_training(run: Path) -> dict[str, float] | None:
    """The plain query stream's statistics over the logged steps of the last epoch of a run's
    metrics.jsonl: positive / negative cosine and its loss (``loss_plain``; ``loss`` without
    BatchFormer), or None for a run without training lines (a baseline)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if "pos_sim" in r and "epoch" in r]
    if not rows:
        return None
    last = max(r["epoch"] for r in rows)
    tail = [r for r in rows if r["epoch"] > last - 1]
    return {"pos": statistics.fmean(r["pos_sim"] for r in tail),
            "neg": statistics.fmean(r["neg_sim"] for r in tail),
            "loss": statistics.fmean(r.get("loss_plain", r["loss"]) for r in tail)}


def bf_schemes_table(out: Path, seeds: list[int], regimes: list[str]) -> str:
    """The models x regimes table of bench/results_bf_schemes.sh: accuracies (mean [min,
    max] over seeds), the few-shot group (long-tailed), and the plain stream's positive /
    negative cosine and loss at the end of training."""
    lines = ["| regime | model | seeds | kNN k=20, T=0.07 | kNN k=200, T=0.1 | linear "
             "| few-shot kNN | few-shot linear | pos. cosine (end) | neg. cosine (end) "
             "| plain-stream loss (end) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for regime in regimes:
        for label, pattern in BF_SCHEME_MODELS:
            cols: dict[str, list[float]] = {k: [] for k in ("k20", "k200", "lin", "fk", "fl",
                                                             "pos", "neg", "loss")}
            found = []
            for s in seeds:
                run = out / regime / pattern.format(s=s)
                if not (run / "eval.json").exists():
                    continue
                r = json.loads((run / "eval.json").read_text())
                cols["k20"].append(knn_top1(r, 20, 0.07))
                cols["k200"].append(knn_top1(r, 200, 0.1))
                cols["lin"].append(r["linear_top1"])
                if "few" in r:
                    cols["fk"].append(r["few"]["knn"])
                    cols["fl"].append(r["few"]["linear"])
                end = end_of_training(run)
                if end is not None:
                    for k in ("pos", "neg", "loss"):
                        cols[k].append(end[k])
                found.append(s)
            if found:
                lines.append(f"| {BF_SCHEME_REGIMES.get(regime, regime)} | {label} | "
                             f"{','.join(map(str, found))} | "
                             + " | ".join(cell(cols[k]) for k in ("k20", "k200", "lin", "fk",
                                                                  "fl")) + " | "
                             + " | ".join(cell(cols[k], 3) for k in ("pos", "neg", "loss"))
                             + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--table", choices=sorted(TABLES), default="fmnist")
    ap.add_argument("--epochs", type=int, default=None, help="default: the demo budget")
    ap.add_argument("--seeds", default="0 1")
    ap.add_argument("--regimes", default="lt", help="bf-schemes: the regimes to show")
    ap.add_argument("--write-doc", action="store_true",
                    help="put the table into docs/results.md (only at the demo budget)")
    args = ap.parse_args()
    begin, end, budget, rows = TABLES[args.table]
    epochs = budget if args.epochs is None else args.epochs
    seeds = [int(s) for s in args.seeds.split()]
    if args.table == "bf":
        text = bf_table(args.runs, seeds)
    elif args.table == "bf-schemes":
        text = bf_schemes_table(args.runs, seeds, args.regimes.split())
    else:
        text = table(args.runs, seeds, rows)
    print(text)
    if args.write_doc and epochs == budget:
        doc = DOC.read_text() if DOC.exists() else f"# Results\n\n{begin}\n{end}\n"
        if begin not in doc or end not in doc:
            print(f"error: {DOC} lacks the {begin} / {end} markers", file=sys.stderr)
            return 2
        head, rest = doc.split(begin, 1)
        doc = head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1]
        DOC.write_text(doc)
        print(f"updated {DOC}")
    else:
        (args.runs / "results.md").write_text(text + "\n")
        print(f"wrote {args.runs / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
