"""The run directory (``run.output_dir``): what a run writes there, the checks before a run
starts, ``--overwrite`` and the comparison of a resumed run's config with the saved one."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from sslkit.checkpoint import PREV_NAME
from sslkit.config import Config
from sslkit.errors import UserError

RUN_FILES = ("config.yaml", "metrics.jsonl", "tb", "checkpoints", "backbone.pt", "eval.json")
# keys whose change makes a checkpoint unusable for --resume
STRUCTURAL = ("data.name", "data.channels", "data.image_size", "model", "method", "batchformer",
              "optim.name", "train.batch_size")


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


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
    present = [n for n in RUN_FILES if (out / n).exists()]
    if resume:
        ck = out / "checkpoints"
        if not (ck / "last.pt").exists() and not (ck / PREV_NAME).exists():
            raise UserError(f"nothing to resume in '{out}': no checkpoints/last.pt; start the "
                            f"run without --resume")
    elif present and not overwrite:
        raise UserError(f"run.output_dir '{out}' already holds a run ({', '.join(present)}); "
                        f"continue it with --resume, replace it with --overwrite, or choose "
                        f"another run.output_dir")


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


def compare_resume_config(saved: dict, cfg: Config, source: Path) -> list[str]:
    """Refuse structural changes; return the other changed keys (printed as a note).

    Both sides must be resolved configs (:func:`sslkit.resolved.resolved`; ``saved`` as a
    dict), so that a checkpoint whose config left a default as null matches the same run
    written out in full."""
    old, new = flatten(saved), flatten(cfg.to_dict())
    # run.overwrite is the permission a run started with, not part of the run: not a change
    changed = [k for k in new if old.get(k, new[k]) != new[k] and k != "run.overwrite"]
    for k in changed:
        if any(k == s or k.startswith(s + ".") for s in STRUCTURAL):
            raise UserError(f"cannot resume from '{source}': {k} was {old[k]!r} there but is "
                            f"{new[k]!r} now; resume with the run's own config.yaml")
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed]
