"""Checkpoint files: atomic writes and safe, well-explained loading.

Writes are atomic: the object goes to a temporary file in the same directory, which is
flushed and fsync'ed, then renamed over the target (the previous file, if any, is first
renamed to ``prev.pt`` beside it, so a reader always finds a complete checkpoint). Loading
always uses ``torch.load(..., weights_only=True)``: a pickle payload in a file a user hands
in is refused, never run.

``last.pt`` layout::

    {"format": "sslkit", "version": 1,
     "model": method.state_dict(),      # BatchFormer under 'batchformer.*',
                                        # momentum encoder under 'momentum_*'
     "optimizer": ..., "scheduler": ..., "scaler": ...,
     "epoch": int, "step": int,         # completed epochs / optimizer steps
     "skipped_steps": int,              # non-finite steps skipped (train.nan_policy=skip)
     "data": {"steps_per_epoch": int, "seed": int},   # checked on resume
     "config": Config.to_dict(), "rng": [one RNG state per process],
     "online_probe": ...,               # with eval.online_probe only
     "spikes": {"lr_factor", "window", "retries", "rollbacks", "spike_step"},
                                        # the loss-spike guard (sslkit.train.spikes)
     "health": {"alarm", "under"}}      # the collapse alarm (sslkit.train.health)
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch

from sslkit.errors import CheckpointError

FORMAT = "sslkit"
VERSION = 1
PREV_NAME = "prev.pt"


def training_state(*, model: dict, optimizer: dict, scheduler: dict, scaler: dict, step: int,
                   steps_per_epoch: int, seed: int, skipped_steps: int, config: dict,
                   rng: list, online_probe: dict | None = None,
                   spikes: dict | None = None, health: dict | None = None) -> dict:
    """The dict ``last.pt`` holds after ``step`` optimizer steps (the layout above), marked
    with this file's :data:`FORMAT` and :data:`VERSION`; ``rng`` has one state per process."""
    state = {"format": FORMAT, "version": VERSION, "model": model, "optimizer": optimizer,
             "scheduler": scheduler, "scaler": scaler, "epoch": step // steps_per_epoch,
             "step": step, "data": {"steps_per_epoch": steps_per_epoch, "seed": seed},
             "skipped_steps": skipped_steps, "config": config, "rng": rng}
    if online_probe is not None:
        state["online_probe"] = online_probe
    if spikes is not None:
        state["spikes"] = spikes
    if health is not None:
        state["health"] = health
    return state


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomic(obj: Any, path: str | os.PathLike, keep_previous: bool = True,
                dump: Callable[[Any, Any], None] | None = None) -> None:
    """``dump(obj, file)`` (``torch.save``; e.g. ``pickle.dump`` for detectron2) to ``path``
    atomically: temp file, fsync, rename.

    With ``keep_previous`` the file being replaced survives as ``prev.pt`` in the same
    directory. If the write fails (e.g. the disk is full) the temporary file is removed,
    the existing checkpoint is untouched and a :class:`CheckpointError` says why.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            (dump or torch.save)(obj, fh)  # looked up now: tests patch torch.save
            fh.flush()
            os.fsync(fh.fileno())
    except (OSError, RuntimeError) as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        err = getattr(e, "errno", None)
        why = ("the disk is full" if err == errno.ENOSPC or "No space" in str(e)
               else f"{type(e).__name__}: {e}")
        raise CheckpointError(f"could not write checkpoint {path} ({why}); the previous "
                              f"checkpoint is kept unchanged") from None
    if keep_previous and path.exists():
        os.replace(path, path.with_name(PREV_NAME))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load_any(path: Path) -> Any:
    """``torch.load(weights_only=True)`` on the CPU, every failure as a CheckpointError."""
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist; pass a run's "
                              f"checkpoints/last.pt or backbone.pt")
    if path.is_dir():
        raise CheckpointError(f"checkpoint '{path}' is a directory; pass the file "
                              f"(checkpoints/last.pt or backbone.pt)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes); the run that wrote it "
                              f"was probably interrupted")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint '{path}' ({e.strerror})") from None
    # torch.save writes a zip archive (b"PK\x03\x04"), older PyTorch a pickle (b"\x80")
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):
        raise CheckpointError(f"'{path}' is not a PyTorch checkpoint (torch.save writes a zip "
                              f"archive or a pickle; this file is neither); pass a run's "
                              f"checkpoints/last.pt or backbone.pt, or a published .pth.tar")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            OSError, KeyError, AttributeError, IndexError, TypeError, UnicodeDecodeError,
            MemoryError) as e:
        # weights_only refuses any global it does not know: a pickle payload, foreign objects
        if re.search(r"Unsupported global|GLOBAL |allowed global", str(e)):
            raise CheckpointError(f"checkpoint '{path}' holds Python objects that safe loading "
                                  f"(weights_only=True) refuses to run; only tensors and plain "
                                  f"data are accepted") from None
        raise CheckpointError(f"checkpoint '{path}' is a damaged PyTorch file (corrupt or "
                              f"truncated); use another copy, or prev.pt beside a run's last.pt") from None


def is_sslkit_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT and "model" in obj


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a full training checkpoint (``last.pt``); refuse anything else with one line."""
    path = Path(path)
    obj = load_any(path)
    if not is_sslkit_checkpoint(obj):
        raise CheckpointError(f"'{path}' is not an sslkit training checkpoint (no 'format: "
                              f"sslkit' / 'model' entries)")
    missing = [k for k in ("model", "epoch", "step", "config") if k not in obj]
    if missing or not isinstance(obj["model"], dict) or not isinstance(obj["config"], dict):
        raise CheckpointError(f"checkpoint '{path}' is incomplete (missing {', '.join(missing) or 'valid model/config'})")
    if obj.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint '{path}' has format version {obj['version']}; this "
                              f"sslkit reads version {VERSION} or older; upgrade sslkit")
    return obj


def load_checkpoint_with_fallback(path: str | os.PathLike) -> tuple[dict, Path]:
    """Load ``last.pt``; if it is unreadable, fall back to ``prev.pt`` beside it (with a note)."""
    path = Path(path)
    try:
        return load_checkpoint(path), path
    except CheckpointError as first:
        prev = path.with_name(PREV_NAME)
        if prev.exists():
            try:
                obj = load_checkpoint(prev)
            except CheckpointError:
                raise first from None
            print(f"warning: {first}; falling back to the previous checkpoint {prev}", flush=True)
            return obj, prev
        raise


def load_state_dict_file(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """Load a plain state dict (``backbone.pt``) safely; refuse anything that is not one."""
    path = Path(path)
    obj = load_any(path)
    if is_sslkit_checkpoint(obj):
        raise CheckpointError(f"'{path}' is a full training checkpoint, not a state dict; use "
                              f"load_checkpoint")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # common wrapping of other toolkits
    if (not isinstance(obj, dict) or not obj
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        raise CheckpointError(f"'{path}' is not a state dict of tensors (nor an sslkit "
                              f"checkpoint)")
    return OrderedDict(obj)


def describe_mismatch(module: torch.nn.Module, state: dict) -> str | None:
    """None when ``state`` fits ``module`` exactly, else one line naming the first mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    for k, v in own.items():
        if k in state and tuple(state[k].shape) != tuple(v.shape):
            return (f"'{k}' has shape {tuple(state[k].shape)} in the checkpoint but "
                    f"{tuple(v.shape)} in the configured model")
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. '{unexpected[0]}')")
        return "; ".join(parts)
    return None


def load_into(module: torch.nn.Module, state: dict, source: str, what: str = "model") -> None:
    """``module.load_state_dict(state, strict=True)`` or one line naming the mismatch."""
    problem = describe_mismatch(module, state)
    if problem:
        raise CheckpointError(f"checkpoint '{source}' does not fit the configured {what} "
                              f"(another architecture?): {problem}")
    module.load_state_dict(state, strict=True)
