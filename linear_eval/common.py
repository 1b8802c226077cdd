"""What the two linear probes share: the per-epoch LR schedule and small reporting helpers."""
from __future__ import annotations

import math
from typing import Sequence


def lr_at_epoch(base_lr: float, epoch: int, epochs: int, schedule: str,
                milestones: Sequence[float]) -> float:
    """LR for ``epoch`` (0-based): step = x0.1 at each ``round(m * epochs)``; cosine =
    ``base * 0.5 * (1 + cos(pi * epoch / epochs))``."""
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    drops = sum(epoch >= round(m * epochs) for m in milestones)
    return base_lr * (0.1 ** drops)


def percent(hits: int, n: int) -> float:
    return 100.0 * hits / max(1, n)


def log_scalar(writer, tag: str, value: float, step: int) -> None:
    """``writer.add_scalar`` when a TensorBoard writer is given."""
    if writer is not None:
        writer.add_scalar(tag, value, step)
