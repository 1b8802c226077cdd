"""MoCo-v2's queue and shuffle-BN rules: the queue holds whole steps of keys, the
one-process split-BatchNorm groups divide the batch (checked on the config and on the batch
a process sees)."""
from __future__ import annotations

from sslkit.errors import ConfigError


def check_queue_size(queue_size: int, per_step: int, detail: str) -> None:
    """MoCo-v2's queue must be a multiple of the keys enqueued per step (``per_step``, made
    of ``detail``), so that every step writes one contiguous block."""
    if queue_size % per_step:
        ok = max(per_step, queue_size // per_step * per_step)
        raise ConfigError(f"method.queue_size={queue_size} must be a multiple of the keys "
                          f"enqueued per step ({per_step} = {detail}); e.g. "
                          f"--set method.queue_size={ok}")


def check_bn_splits(batch: int, bn_splits: int, what: str = "train.batch_size") -> None:
    """One-process shuffle-BN splits the batch into ``bn_splits`` equal groups."""
    if batch % bn_splits:
        raise ConfigError(f"{what}={batch} must be divisible by method.bn_splits={bn_splits} "
                          f"(shuffle-BN groups); change one of them, or --set "
                          f"method.bn_splits=1")


def keys_per_step(batch: int, symmetric: bool, keys_both: bool) -> tuple[int, str]:
    """(keys enqueued per step for a global batch, what they are made of)."""
    streams = 2 if keys_both else 1
    return (batch * (2 if symmetric else 1) * streams,
            (" x 2 (symmetric)" if symmetric else "")
            + (" x 2 (batchformer.keys=both enqueues both key streams)" if keys_both else ""))
