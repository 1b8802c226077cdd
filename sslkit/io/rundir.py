"""The run directory (``run.output_dir``): what a run writes there, the checks before a run
starts, opening it (``--overwrite``, ``config.yaml``, leftovers of a killed write), what
``--auto-resume`` makes of a directory, and the comparison of a resumed run's config with
the saved one (both resolved by :func:`sslkit.methods.resolve.resolved_pair`)."""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from sslkit.io.checkpoint import PREV_NAME
from sslkit.config import Config, save as save_config
from sslkit.errors import UserError

RUN_FILES = ("config.yaml", "metrics.jsonl", "tb", "checkpoints", "backbone.pt", "eval.json",
             "finetune.json", "finetune")
# what a run has written before its first checkpoint (--auto-resume may start it again)
EARLY_FILES = ("config.yaml", "metrics.jsonl", "tb", "checkpoints")
# keys whose change makes a checkpoint unusable for --resume
STRUCTURAL = ("data.name", "data.channels", "data.image_size", "model", "method", "batchformer",
              "optim.name", "train.batch_size")
# keys under those that change how the step runs, not what it computes or the model's shape
HOW_IT_RUNS = ("model.grad_checkpointing",)


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def run_files(out: Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in ``out``."""
    return [n for n in RUN_FILES if (out / n).exists()]


def has_checkpoint(out: Path) -> bool:
    ck = out / "checkpoints"
    return (ck / "last.pt").exists() or (ck / PREV_NAME).exists()


def _restart_hint() -> str:
    # torchrun sets TORCHELASTIC_RESTART_COUNT in the workers it starts, 0 on the first start
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
        return ("; torchrun restarted this process: start it with --auto-resume so that "
                "restarts resume")
    return ""


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an unusable run directory before any work starts; changes nothing on disk."""
    if out.exists() and not out.is_dir():
        raise UserError(f"run.output_dir '{out}' is a file, not a directory; choose another "
                        f"run.output_dir")
    base = _nearest_existing(out)
    if not base.is_dir():
        raise UserError(f"run.output_dir '{out}' cannot be created: '{base}' is not a directory")
    try:  # a real write probe (permission bits alone mislead root and read-only mounts)
        probe = base / f".sslkit-write-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(f"run.output_dir '{out}' is not writable ({e.strerror} in '{base}'); "
                        f"choose another run.output_dir") from None
    present = run_files(out)
    if resume:
        if not has_checkpoint(out):
            raise UserError(f"nothing to resume in '{out}': no checkpoints/last.pt; start the "
                            f"run without --resume")
    elif present and not overwrite:
        raise UserError(f"run.output_dir '{out}' already holds a run ({', '.join(present)}); "
                        f"continue it with --resume (or --auto-resume), replace it with "
                        f"--overwrite, or choose another run.output_dir{_restart_hint()}")


def auto_resume_mode(out: Path, given: dict, saved: dict | None, given_source: str) -> str:
    """What ``--auto-resume`` does with the run directory ``out``: ``"new"`` (absent or holding
    no run file), ``"resume"`` (a checkpoint is there) or ``"restart"`` (a run stopped before
    its first checkpoint: nothing to keep, it starts again). ``given`` is the command line's
    resolved config, ``saved`` the resolved ``out/config.yaml`` (both as dicts, with the same
    ``--set`` items); a structural difference between them is refused with one line."""
    present = run_files(out)
    if not present:
        return "new"
    if saved is None:
        raise UserError(f"run.output_dir '{out}' holds run files ({', '.join(present)}) but no "
                        f"config.yaml, so --auto-resume cannot tell which run it is; choose "
                        f"another run.output_dir, or replace it with --overwrite")
    change = _structural_change(saved, given)
    if change is not None:
        key, old, new = change
        raise UserError(f"--auto-resume: '{out}' holds a run with {key}={old!r} (its "
                        f"config.yaml) but {given_source} gives {new!r}; continue that run with "
                        f"its own config, or choose another run.output_dir")
    if has_checkpoint(out):
        return "resume"
    if set(present) <= set(EARLY_FILES):
        return "restart"
    raise UserError(f"run.output_dir '{out}' holds a run without checkpoints "
                    f"({', '.join(present)}); --auto-resume does not replace it: choose another "
                    f"run.output_dir, or replace it with --overwrite")


def _structural_change(old_cfg: dict, new_cfg: dict) -> tuple[str, object, object] | None:
    old, new = flatten(old_cfg), flatten(new_cfg)
    for k in new:
        if old.get(k, new[k]) != new[k] and k not in HOW_IT_RUNS and any(
                k == s or k.startswith(s + ".") for s in STRUCTURAL):
            return k, old[k], new[k]
    return None


def open_run_dir(out: Path, cfg: Config, new: bool, overwrite: bool) -> None:
    """Rank 0, once every check has passed. A new run replaces the files of the run there
    (``overwrite``), creates ``checkpoints/`` and writes ``config.yaml``, with
    ``run.overwrite`` saved as false: a permission, not part of the recipe, so that starting
    from this config.yaml again cannot replace the run. Every start removes the temporary
    files of a checkpoint write that was killed halfway."""
    if new:
        if overwrite:
            clear_run_dir(out)
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, overwrite=False)),
                    out / "config.yaml")
    for stale in (out / "checkpoints").glob(".*.tmp-*"):
        stale.unlink()


def clear_run_dir(out: Path) -> None:
    """--overwrite: remove only the files a run writes (nothing else in the directory)."""
    for name in RUN_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def compare_resume_config(saved: dict, given: dict, source: Path) -> list[str]:
    """Refuse structural changes; return the other changed keys (printed as a note). Both
    are config dicts resolved alike (:func:`sslkit.methods.resolve.resolved_pair`)."""
    change = _structural_change(saved, given)
    if change is not None:
        k, was, now = change
        raise UserError(f"cannot resume from '{source}': {k} was {was!r} there but is "
                        f"{now!r} now; resume with the run's own config.yaml")
    return changed_keys(saved, given)


def changed_keys(old_cfg: dict, new_cfg: dict) -> list[str]:
    """``"key: old -> new"`` for each key whose value differs."""
    old, new = flatten(old_cfg), flatten(new_cfg)
    # run.overwrite is the permission a run started with, not part of the run: not a change
    changed = [k for k in new if old.get(k, new[k]) != new[k] and k != "run.overwrite"]
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed]
