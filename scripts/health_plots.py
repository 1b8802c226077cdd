"""Plots of a run's health from its metrics.jsonl, and the healthy ranges of docs/monitoring.md.

    python scripts/health_plots.py RUN_DIR [RUN_DIR ...] --out plot.png [--labels A B ...]
    python scripts/health_plots.py RUN_DIR [RUN_DIR ...] --ranges [--doc docs/monitoring.md]

The plot has one panel per curve, the runs overlaid: the loss, ``rankme``, ``embed_std`` x
sqrt(d) (1 for outputs spread over the sphere, 0 at collapse; d is the run's
``method.proj_dim``), ``align`` and ``uniform``; the alarm's floors as dashed lines, each
rollback (``{"event": "rollback"}``) as a dotted vertical line at its step. ``--ranges``
prints one markdown row per run: each signal's 5th percentile, median and 95th percentile over
the run's logged steps after its first tenth (the early steps of a random network are not a
trained run's range), and the alarm the run raised, if any.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sslkit import config  # noqa: E402
from sslkit.train.health import RANK_FLOOR, STD_FLOOR  # noqa: E402

PANELS = [("loss", "loss"), ("rankme", "rankme"), ("embed_std", "embed_std x sqrt(d)"),
          ("align", "align"), ("uniform", "uniform")]


def read_run(run: Path) -> tuple[list[dict], list[dict], int]:
    """(training records, rollback records, d) of a run directory."""
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()
            if ln.strip()]
    train = [r for r in recs if "loss" in r and "event" not in r]
    rollbacks = [r for r in recs if r.get("event") == "rollback"]
    d = config.load(run / "config.yaml").method.proj_dim
    return train, rollbacks, int(d)


def value(rec: dict, key: str, d: int) -> float:
    v = rec.get(key, float("nan"))
    return v * math.sqrt(d) if key == "embed_std" else v


def segments(train: list[dict]) -> list[list[dict]]:
    """The steps each rollback abandoned (from the step it went back to on), then the run as
    it went on: lists of records in step order, the run's last."""
    parts: list[list[dict]] = []
    run: list[dict] = []
    for r in train:
        if run and r["step"] <= run[-1]["step"]:  # a rollback to before this step
            parts.append([x for x in run if x["step"] >= r["step"]])
            run = [x for x in run if x["step"] < r["step"]]
        run.append(r)
    return parts + [run]


def plot(runs: list[Path], labels: list[str], out: Path) -> None:
    import matplotlib  # a dev dependency: only this script draws
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    fig, axes = plt.subplots(len(PANELS), 1, figsize=(8, 2.0 * len(PANELS)), sharex=True)
    for run, label in zip(runs, labels):
        train, rollbacks, d = read_run(run)
        parts = segments(train)
        for ax, (key, _) in zip(axes, PANELS):
            line, = ax.plot([r["step"] for r in parts[-1]],
                            [value(r, key, d) for r in parts[-1]], lw=1, label=label)
            colour = line.get_color()
            for part in parts[:-1]:  # the steps a rollback abandoned: faded
                ax.plot([r["step"] for r in part], [value(r, key, d) for r in part], lw=1,
                        color=colour, alpha=0.35)
            for rb in rollbacks:
                ax.axvline(rb["step"], color=colour, ls=":", lw=1)
    for ax, (key, title) in zip(axes, PANELS):
        ax.set_ylabel(title, fontsize=8)
        floor = {"rankme": RANK_FLOOR, "embed_std": STD_FLOOR}.get(key)
        if floor is not None:
            ax.axhline(floor, color="grey", ls="--", lw=1)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    axes[-1].set_xlabel("step (dotted: a rollback, faded: the steps it abandoned; dashed: "
                        "the alarm's floor)", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


BEGIN, END = "<!-- health-ranges:begin -->", "<!-- health-ranges:end -->"


def ranges(runs: list[Path], labels: list[str]) -> list[str]:
    """One markdown row per run: p5 / median / p95 of each signal after the first tenth."""
    keys = [k for k, _ in PANELS[1:]]
    titles = [t for _, t in PANELS[1:]]  # embed_std as plotted: x sqrt(d)
    rows = ["| run | steps | " + " | ".join(f"{t} (p5 / median / p95)" for t in titles)
            + " | alarm |", "|---" * (len(keys) + 3) + "|"]
    for run, label in zip(runs, labels):
        train, _, d = read_run(run)
        last = train[-1]["step"] if train else 0
        late = [r for r in train if r["step"] > last / 10]
        cells = []
        for k in keys:
            vals = sorted(value(r, k, d) for r in late if math.isfinite(value(r, k, d)))
            if not vals:
                cells.append("-")
                continue
            q = statistics.quantiles(vals, n=20) if len(vals) > 1 else vals * 19
            cells.append(f"{q[0]:.3g} / {statistics.median(vals):.3g} / {q[-1]:.3g}")
        rows.append(f"| {label} | {last} | " + " | ".join(cells) + f" | {_alarm(run)} |")
    return rows


def write_doc(doc: Path, rows: list[str]) -> None:
    """The table between the health-ranges markers of ``doc``."""
    text = doc.read_text()
    head, rest = text.split(BEGIN, 1)
    doc.write_text(head + BEGIN + "\n" + "\n".join(rows) + "\n" + END + rest.split(END, 1)[1])
    print(f"wrote the table into {doc}")


def _alarm(run: Path) -> str:
    """The alarm a run raised, from its console log (``run.log`` beside metrics.jsonl, as
    bench/health_runs.sh writes it), else "-"."""
    log = run / "run.log"
    if not log.exists():
        return "-"
    for line in log.read_text().splitlines():
        if "collapse: " in line or "the run collapsed: " in line:
            return line.split("collapse: ", 1)[-1].split(";")[0].split(": ", 1)[-1]
    return "none"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--labels", nargs="+")
    p.add_argument("--out", type=Path)
    p.add_argument("--ranges", action="store_true")
    p.add_argument("--doc", type=Path, help="with --ranges: write the table into this file "
                   "between its health-ranges markers")
    args = p.parse_args()
    labels = args.labels or [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        p.error("give one label per run")
    if args.ranges:
        rows = ranges(args.runs, labels)
        print("\n".join(rows))
        if args.doc:
            write_doc(args.doc, rows)
    if args.out:
        plot(args.runs, labels, args.out)


if __name__ == "__main__":
    main()
