"""Command-line entry points: ``run_pretrain.py`` / ``sslkit-pretrain``, ``run_lincls.py`` /
``sslkit-lincls`` and ``run_finetune.py`` / ``sslkit-finetune``.

Exit codes: 0 ok (also "already finished"); 2 a user error, printed as ONE line ``error: ...``
on stderr (no traceback); 1 an internal error (with its traceback, so it can be reported);
3 a process of a torchrun run stopped answering within ``run.dist_timeout_s`` or ended (one
line); 4 the collapse alarm stopped the run (``train.on_collapse: stop``) after a checkpoint of
its step (one line, docs/monitoring.md); 130 interrupted (Ctrl-C), with the command that continues the run; 143 / 138 stopped
by SIGTERM / SIGUSR1 after writing a checkpoint of the step reached (128 + the signal's
number, see :mod:`sslkit.train.lifecycle`).

The CLI is the top of the import graph: the only module of sslkit that reaches the evaluation
entry (``linear_eval.main``). Both heavy imports below are made inside the commands, so that a
bad command line or config is reported before torch is imported (a one-line error in well
under a second instead of several).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

from sslkit import config as config_mod
from sslkit.errors import Interrupted, OneLineParser, UserError, guard


def _add_config_args(p: argparse.ArgumentParser, config_help: str, example: str) -> None:
    p.add_argument("--config", metavar="PATH", help=config_help)
    p.add_argument("--set", metavar="KEY=VALUE", nargs="+", action="append", default=[],
                   dest="overrides",
                   help=f"override config keys, values parsed as YAML scalars, e.g. "
                        f"--set {example} (repeatable)")


def _overrides(args: argparse.Namespace) -> list[str]:
    return [item for group in args.overrides for item in group]


def pretrain_parser(prog: str = "run_pretrain.py") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog,
                      description="Self-supervised pretraining (MoCo-v2 / MoCo-v3, optional "
                                  "BatchFormer). Writes config.yaml, metrics.jsonl, tb/, "
                                  "checkpoints/last.pt and backbone.pt to run.output_dir.")
    _add_config_args(p, f"YAML config (default: {config_mod.DEMO_CONFIG}, Fashion-MNIST on "
                        f"the CPU)", "train.epochs=10 run.device=cpu")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue a run from its checkpoints/last.pt with its own config.yaml "
                        "(only --set keys that do not change the model, data or batch may "
                        "differ); the run is RUN_DIR, else --set run.output_dir=..., else the "
                        "config's run.output_dir")
    p.add_argument("--auto-resume", action="store_true",
                   help="the same command line for every start (SLURM requeue, torchrun "
                        "restarts): a new run when run.output_dir is empty or absent, a resume "
                        "(as --resume, with the run's config.yaml) when it holds a checkpoint, "
                        "'already finished' (exit 0) when the run is done")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run.output_dir that holds another run (its files "
                        "are replaced)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (every default written out) and exit")
    return p


def lincls_parser(prog: str = "run_lincls.py") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog,
                      description="Evaluate a pretrained backbone: kNN (FAISS) and a linear "
                                  "probe (eval.mode: standard = the papers' protocol, cached = "
                                  "fast cached-feature grid). Writes eval.json into the run "
                                  "directory. Runs under torchrun too (feature extraction and "
                                  "the standard probe are split over the processes).")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="checkpoints/last.pt or backbone.pt of a pretraining run, or a "
                        "checkpoint of the field with --config (facebookresearch/moco v1/v2, "
                        "moco-v3 ResNet/ViT, DeiT format, timm ViT, torchvision ResNet)")
    _add_config_args(p, "YAML config (default: the checkpoint run's config.yaml; required for "
                        "a checkpoint of another toolkit: the recipe it was trained with)",
                     "eval.mode=standard eval.epochs=30")
    p.add_argument("--baseline", choices=("raw-pixels", "random-init"),
                   help="evaluate a reference instead of a checkpoint, under the same protocol")
    p.add_argument("--output", metavar="DIR",
                   help="where to write eval.json (default: the checkpoint's run "
                        "directory; for a file of no sslkit run, <its folder>/<its name "
                        "without extension>_lincls/)")
    return p


def finetune_parser(prog: str = "run_finetune.py") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog,
                      description="Fine-tune a pretrained backbone end to end with a linear "
                                  "head, on all or a few of the training labels "
                                  "(finetune.label_fraction, finetune.subset_file), and score "
                                  "it on the test split. Writes finetune.json where run_lincls "
                                  "writes eval.json, the run's files into its finetune/ "
                                  "folder; the same command resumes an interrupted run. Runs "
                                  "under torchrun too (DDP).")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="checkpoints/last.pt or backbone.pt of a pretraining run, or a "
                        "checkpoint of the field with --config (facebookresearch/moco v1/v2, "
                        "moco-v3 ResNet/ViT, DeiT format, timm ViT, torchvision ResNet)")
    _add_config_args(p, "YAML config put over the checkpoint's own (the keys it sets win): "
                        "the fine-tuning recipe, e.g. configs/imagenet_semisup_r50_1pct.yaml; "
                        "for a checkpoint of another toolkit also its model and data",
                     "finetune.label_fraction=0.01 finetune.epochs=60")
    p.add_argument("--baseline", choices=("random-init",),
                   help="the same network and recipe from a random initialisation (with "
                        "--checkpoint: that checkpoint's architecture)")
    p.add_argument("--output", metavar="DIR",
                   help="where to write finetune.json and the run's finetune/ folder "
                        "(default: the checkpoint's run directory; for a file of no sslkit "
                        "run, <its folder>/<its name without extension>_finetune/)")
    return p


def _override_value(overrides: list[str], key: str):
    value = None
    for item in overrides:
        k, v = config_mod.parse_override(item)
        if k == key:
            value = v
    return value


def _run_config(args: argparse.Namespace, overrides: list[str]
                ) -> tuple[config_mod.Config, str, list[str]]:
    """(config, the file it came from, the --set items that differ from that file).

    A new run: ``--config`` (or the demo) plus ``--set``. ``--resume``: the run's own
    config.yaml plus ``--set``; the run is RUN_DIR, else run.output_dir from --set, else
    from the config file."""
    path = args.config if args.config is not None else config_mod.demo_config_path()
    if not args.resume:
        return config_mod.load(path, overrides), path, overrides
    if args.resume is not True:
        run_dir = args.resume
        overrides = [f"run.output_dir={run_dir}"] + overrides
    else:
        run_dir = (_override_value(overrides, "run.output_dir")
                   or config_mod.load(path).run.output_dir)
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise UserError(f"nothing to resume in '{run_dir}': no config.yaml; give the run "
                        f"directory (--resume RUN_DIR) or start the run without --resume")
    return config_mod.load(saved, overrides), str(saved), overrides


def _auto_resume(given: config_mod.Config, source: str, overrides: list[str]
                 ) -> tuple[config_mod.Config, str, str]:
    """``--auto-resume``: (the resolved config, the file it came from, what to do: "new",
    "resume" or "restart") for the run directory as it is on disk; ``given`` is the command
    line's resolved config."""
    from sslkit.io.rundir import auto_resume_mode, changed_keys  # torch: after the checks
    from sslkit.methods.resolve import resolved_pair  # torch as well

    run_dir = Path(given.run.output_dir)
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return given, source, auto_resume_mode(run_dir, given.to_dict(), None, source)
    saved, given = resolved_pair(config_mod.load(saved_path, overrides), given, str(saved_path))
    mode = auto_resume_mode(run_dir, given.to_dict(), saved.to_dict(), source)
    if mode != "resume":
        return given, source, mode
    notes = changed_keys(saved.to_dict(), given.to_dict())
    if notes and os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(f"note: {source} differs from {saved_path} in {'; '.join(notes)}; the run "
              f"continues with its own config.yaml (--set changes a key)", flush=True)
    return saved, str(saved_path), mode


def _header(cfg: config_mod.Config, source: str, changes: list[str], resume: bool,
            replacing: bool, restarted: bool = False) -> list[str]:
    """The two lines a run prints first; ``replacing``: --overwrite over a run's files."""
    changed = (" + " + " ".join(shlex.quote(c) for c in changes)) if changes else ""
    what = "resuming" if resume else ("new run, replacing the one there" if replacing
                                      else "new run")
    if restarted:
        what += "; the run there had no checkpoint yet"
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if attempt:
        what += f"; torchrun restart {attempt}"
    return [f"config: {source}{changed}",
            f"run directory: {cfg.run.output_dir} ({what}); full config: "
            f"{Path(cfg.run.output_dir) / 'config.yaml'}"]


def _resume_command(prog: str, run_dir: str) -> str:
    if prog.endswith(".py"):
        python = sys.executable
        rel = os.path.relpath(python)
        prog = f"{rel if not rel.startswith('..') else python} {prog}"
    return f"{prog} --resume {shlex.quote(run_dir)}"


def _pretrain(argv: Sequence[str] | None, prog: str) -> int:
    args = pretrain_parser(prog).parse_args(argv)
    if args.auto_resume and (args.resume or args.overwrite):
        raise UserError(f"--auto-resume decides by itself whether to start or resume; drop "
                        f"{'--resume' if args.resume else '--overwrite'}")
    overrides = _overrides(args)
    if args.overwrite:
        overrides = overrides + ["run.overwrite=true"]
    cfg, source, changes = _run_config(args, overrides)  # config errors before torch loads
    from sslkit.train.engine import pretrain  # torch, kornia, faiss: seconds; after the checks
    from sslkit.train.lifecycle import stop_exit_code  # torch as well
    from sslkit.methods.resolve import resolved  # torch as well
    from sslkit.io.rundir import run_files  # torch as well (through the checkpoint module)

    cfg = resolved(cfg)  # the one resolution of the run: the engine takes it as it is
    resume, overwrite, mode = bool(args.resume), args.overwrite, None
    if args.auto_resume:
        cfg, source, mode = _auto_resume(cfg, source, overrides)
        resume, overwrite = mode == "resume", mode == "restart"
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    try:
        summary = pretrain(cfg, resume=resume, overwrite=overwrite,
                           header=_header(cfg, source, changes, resume,
                                          overwrite and bool(run_files(Path(cfg.run.output_dir))),
                                          restarted=mode == "restart"))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; the last checkpoint is kept; continue the run with: "
                          f"{_resume_command(prog, cfg.run.output_dir)}") from None
    return stop_exit_code(summary.stopped_by) if summary.stopped_by else 0


def _lincls(argv: Sequence[str] | None, prog: str) -> int:
    args = lincls_parser(prog).parse_args(argv)
    from linear_eval.main import run_lincls  # imports torch: after the command line is parsed

    run_lincls(checkpoint=args.checkpoint, config_path=args.config,
               overrides=_overrides(args), baseline=args.baseline, output=args.output)
    return 0


def _finetune(argv: Sequence[str] | None, prog: str) -> int:
    args = finetune_parser(prog).parse_args(argv)
    from sslkit.evaluation.finetune import run_finetune  # torch: after the command line
    from sslkit.train.lifecycle import stop_exit_code  # torch as well

    try:
        result = run_finetune(checkpoint=args.checkpoint, config_path=args.config,
                              overrides=_overrides(args), baseline=args.baseline,
                              output=args.output)
    except KeyboardInterrupt:
        raise Interrupted("interrupted; the last checkpoint is kept; the same command "
                          "continues the fine-tuning") from None
    return stop_exit_code(result["stopped_by"]) if "stopped_by" in result else 0


def pretrain_main(argv: Sequence[str] | None = None, prog: str = "run_pretrain.py") -> int:
    return guard(lambda a: _pretrain(a, prog), argv)


def lincls_main(argv: Sequence[str] | None = None, prog: str = "run_lincls.py") -> int:
    return guard(lambda a: _lincls(a, prog), argv)


def finetune_main(argv: Sequence[str] | None = None, prog: str = "run_finetune.py") -> int:
    return guard(lambda a: _finetune(a, prog), argv)


def pretrain_entry() -> None:  # console script ``sslkit-pretrain``
    sys.exit(pretrain_main(prog="sslkit-pretrain"))


def lincls_entry() -> None:  # console script ``sslkit-lincls``
    sys.exit(lincls_main(prog="sslkit-lincls"))


def finetune_entry() -> None:  # console script ``sslkit-finetune``
    sys.exit(finetune_main(prog="sslkit-finetune"))
