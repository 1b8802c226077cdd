"""Summarise the runs of bench/results_finetune.sh as the results-finetune table of
docs/results.md: test top-1 of the demo's backbone and of random init, fine-tuned
(finetune.json) and linearly probed (eval.json, the cached probe), at each label fraction;
mean and range [min, max] over the seeds, and the gain of pretraining (the mean and range of
the per-seed differences).

    python bench/results_finetune_table.py runs/results_finetune --seeds "0 1 2"

With ``--write-doc`` the table replaces the block between its markers in docs/results.md;
otherwise it goes to ``<runs>/results.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_table import DOC, cell  # noqa: E402  (bench/results_table.py)

BEGIN, END = "<!-- results-finetune:begin -->", "<!-- results-finetune:end -->"
INITS = {"pretrained": ("the demo's backbone", ""),
         "random": ("random init", "baseline_random_init")}
PROTOCOLS = {"fine-tuned": ("finetune.json", "top1"), "linear probe": ("eval.json",
                                                                        "linear_top1")}


def run_dir(out: Path, fraction: str, init: str, seed: int) -> Path:
    d = out / f"f{fraction}" / f"{init}_s{seed}"
    return d / INITS[init][1] if INITS[init][1] else d


def values(out: Path, fraction: str, init: str, protocol: str, seeds: list[int]
           ) -> dict[int, float]:
    """{seed: test top-1} of the runs that finished."""
    name, key = PROTOCOLS[protocol]
    found = {}
    for s in seeds:
        path = run_dir(out, fraction, init, s) / name
        if path.exists():
            found[s] = json.loads(path.read_text())[key]
    return found


def _images(out: Path, fraction: str, seeds: list[int]) -> str:
    for s in seeds:
        path = run_dir(out, fraction, "pretrained", s) / "finetune.json"
        if path.exists():
            return f"{json.loads(path.read_text())['train_images']:,}"
    return "?"


def table(out: Path, seeds: list[int], fractions: list[str]) -> str:
    head = " | ".join(f"{float(f) * 100:g} % ({_images(out, f, seeds)} images)"
                      for f in fractions)
    lines = [f"| protocol | backbone | {head} |", "|---|---|" + "---|" * len(fractions)]
    for protocol in PROTOCOLS:
        for init, (label, _) in INITS.items():
            cells = [cell(list(values(out, f, init, protocol, seeds).values()))
                     for f in fractions]
            lines.append(f"| {protocol} | {label} | " + " | ".join(cells) + " |")
        gains = []
        for f in fractions:
            a = values(out, f, "pretrained", protocol, seeds)
            b = values(out, f, "random", protocol, seeds)
            gains.append(cell([a[s] - b[s] for s in seeds if s in a and s in b]))
        lines.append(f"| {protocol} | **gain of pretraining** | " + " | ".join(gains) + " |")
    runs = [run_dir(out, f, init, s) / "finetune.json" for f in fractions for init in INITS
            for s in seeds]
    minutes = [json.loads(p.read_text())["timings"]["total_s"] / 60 for p in runs if p.exists()]
    found = sorted({s for f in fractions for init in INITS
                    for s in values(out, f, init, "fine-tuned", seeds)})
    note = (f"\nSeeds {','.join(map(str, found))}; test top-1 (%), mean [min, max]; the "
            f"fine-tuning runs took {statistics.fmean(minutes):.1f} min on average "
            f"({len(minutes)} runs)." if minutes else "\nNo finished runs.")
    return "\n".join(lines) + "\n" + note + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the OUT directory of bench/results_finetune.sh")
    p.add_argument("--seeds", default="0 1 2")
    p.add_argument("--fractions", default="0.01 0.1 1.0")
    p.add_argument("--write-doc", action="store_true",
                   help="replace the results-finetune block of docs/results.md")
    args = p.parse_args(argv)
    text = table(args.out, [int(s) for s in args.seeds.split()], args.fractions.split())
    if args.write_doc:
        doc = DOC.read_text()
        if BEGIN not in doc or END not in doc:
            print(f"error: {DOC} lacks the {BEGIN} / {END} markers", file=sys.stderr)
            return 2
        head, rest = doc.split(BEGIN, 1)
        DOC.write_text(head + BEGIN + "\n" + text + END + rest.split(END, 1)[1])
        print(f"updated {DOC}")
    else:
        (args.out / "results.md").write_text(text)
        print(f"wrote {args.out / 'results.md'}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
