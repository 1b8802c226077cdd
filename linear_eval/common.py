"""What the two linear probes share: the per-epoch LR schedule and small reporting helpers."""
from __future__ import annotations

import math
from typing import Sequence

import torch


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


def class_hits(pred: torch.Tensor, labels: torch.Tensor, num_classes: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, count) per class, each (num_classes,) int64, of predictions ``pred``."""
    labels = labels.long().cpu()
    correct = torch.bincount(labels[pred.long().cpu() == labels], minlength=num_classes)
    return correct[:num_classes], torch.bincount(labels, minlength=num_classes)[:num_classes]


def per_class_accuracy(correct: torch.Tensor, count: torch.Tensor) -> list[float]:
    """Top-1 per class in percent (NaN for a class with no test image)."""
    return [100.0 * float(c) / float(n) if n > 0 else math.nan
            for c, n in zip(correct.tolist(), count.tolist())]


def shot_groups(train_counts: Sequence[int], many: int, few: int) -> dict[str, list[int]]:
    """Classes by training images (Liu et al. 2019, OLTR): many-shot ``> many``, few-shot
    ``< few``, medium-shot between."""
    return {"many": [c for c, n in enumerate(train_counts) if n > many],
            "medium": [c for c, n in enumerate(train_counts) if few <= n <= many],
            "few": [c for c, n in enumerate(train_counts) if n < few]}


def group_accuracy(per_class: Sequence[float], classes: Sequence[int]) -> float:
    """The mean of the classes' accuracies (NaN for an empty group)."""
    vals = [per_class[c] for c in classes if not math.isnan(per_class[c])]
    return sum(vals) / len(vals) if vals else math.nan
