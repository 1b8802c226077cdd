"""Command-line entry points: ``run_pretrain.py`` / ``sslkit-pretrain`` and ``run_lincls.py`` /
``sslkit-lincls``.

Exit codes: 0 ok; 2 a user error, printed as ONE line ``error: ...`` on stderr (no traceback);
1 an internal error (with its traceback, so it can be reported).

The CLI is the top of the import graph: the only module of sslkit that reaches the evaluation
entry (``linear_eval.main``). Both heavy imports below are made inside the commands, so that a
bad command line or config is reported before torch is imported (a one-line error in well
under a second instead of several).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from sslkit import config as config_mod
from sslkit.errors import OneLineParser, guard


def _add_config_args(p: argparse.ArgumentParser, config_help: str) -> None:
    p.add_argument("--config", metavar="PATH", help=config_help)
    p.add_argument("--set", metavar="KEY=VALUE", nargs="+", action="append", default=[],
                   dest="overrides",
                   help="override config keys, values parsed as YAML scalars, e.g. "
                        "--set train.epochs=10 run.device=cpu (repeatable)")


def _overrides(args: argparse.Namespace) -> list[str]:
    return [item for group in args.overrides for item in group]


def pretrain_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="run_pretrain.py",
                description="Self-supervised pretraining (MoCo-v2 / MoCo-v3, optional "
                            "BatchFormer). Writes config.yaml, metrics.jsonl, tb/, "
                            "checkpoints/last.pt and backbone.pt to run.output_dir.")
    _add_config_args(p, f"YAML config (default: {config_mod.DEMO_CONFIG}, Fashion-MNIST on "
                        f"the CPU)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in run.output_dir from checkpoints/last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run.output_dir that holds another run (its files "
                        "are replaced)")
    return p


def lincls_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="run_lincls.py",
                description="Evaluate a pretrained backbone: kNN (FAISS) and a linear probe "
                            "(eval.mode: standard = the papers' protocol, cached = fast "
                            "cached-feature grid). Writes eval.json into the run directory.")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="checkpoints/last.pt or backbone.pt of a pretraining run")
    _add_config_args(p, "YAML config (default: the checkpoint run's config.yaml)")
    p.add_argument("--baseline", choices=("raw-pixels", "random-init"),
                   help="evaluate a reference instead of a checkpoint, under the same protocol")
    p.add_argument("--output", metavar="DIR",
                   help="where to write eval.json (default: the checkpoint's run directory)")
    return p


def _pretrain(argv: Sequence[str] | None) -> int:
    args = pretrain_parser().parse_args(argv)
    path = args.config if args.config is not None else config_mod.demo_config_path()
    cfg = config_mod.load(path, _overrides(args))  # config errors before torch is imported
    from sslkit.engine import pretrain  # imports torch: after the config is known to be good

    pretrain(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0


def _lincls(argv: Sequence[str] | None) -> int:
    args = lincls_parser().parse_args(argv)
    from linear_eval.main import run_lincls  # imports torch: after the command line is parsed

    run_lincls(checkpoint=args.checkpoint, config_path=args.config,
               overrides=_overrides(args), baseline=args.baseline, output=args.output)
    return 0


def pretrain_main(argv: Sequence[str] | None = None) -> int:
    return guard(_pretrain, argv, interrupted="interrupted; resume with --resume")


def lincls_main(argv: Sequence[str] | None = None) -> int:
    return guard(_lincls, argv)


def pretrain_entry() -> None:  # console script ``sslkit-pretrain``
    sys.exit(pretrain_main())


def lincls_entry() -> None:  # console script ``sslkit-lincls``
    sys.exit(lincls_main())
