"""The linear probe of the papers: (MoCo-v2 / MoCo-v3 ``main_lincls.py``)
    The backbone stays in eval mode (BN uses its running statistics) and gets no gradient;
    each step draws a fresh random crop + flip on the device (``ProbeTrainTransform``), runs
    the backbone without grad, and trains ``fc = nn.Linear(D, C)`` (weight ~ N(0, 0.01), bias
    0) with SGD(lr = eval.lr x eval.batch_size / 256, momentum 0.9, weight decay
    eval.weight_decay). Schedule (per epoch): ``step`` multiplies the LR by 0.1 at each
    epoch ``round(m x eval.epochs)`` for m in eval.milestones (MoCo-v2: 60/80 of 100);
    ``cosine`` is ``lr x 0.5 (1 + cos(pi epoch / epochs))`` (MoCo-v3). The final fc is
    evaluated on the centre crop of the test split (we report the final epoch, not the best
    epoch over test). At the end the backbone's state dict (weights AND BN buffers) must be
    bit-identical to the one before training, else :class:`BackboneChangedError`.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from linear_eval.common import (class_hits, log_scalar, lr_at_epoch, per_class_accuracy,
                               percent)
from linear_eval.sharding import rank_rows
from sslkit import distributed as dist
from sslkit.config import EvalConfig
from sslkit.data import tensor_pair
from sslkit.evaluation.features import iterate_batches
from sslkit.knn import topk_correct
from sslkit.train.metrics import TB_EVAL, progress_bar
from sslkit.train.optim import linear_scaled
from sslkit.train.runtime import autocast


class BackboneChangedError(RuntimeError):
    """Internal error: the frozen backbone changed during the linear probe (a bug)."""


def snapshot_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every state-dict entry (parameters and buffers)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def check_unchanged(module: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """Raise :class:`BackboneChangedError` unless ``module``'s state equals ``reference``
    bit for bit (the sanity check of MoCo's ``main_lincls.py``, extended to BN buffers)."""
    state = module.state_dict()
    if set(state) != set(reference):
        raise BackboneChangedError("the backbone's state-dict keys changed during the probe")
    for k, v in state.items():
        ref = reference[k]
        if v.shape != ref.shape or v.dtype != ref.dtype or not torch.equal(v.detach().cpu(), ref):
            raise BackboneChangedError(f"the frozen backbone changed during the linear probe "
                                       f"('{k}' differs); the probe must not train it")


def init_linear(feat_dim: int, num_classes: int, seed: int = 0) -> nn.Linear:
    """``nn.Linear(feat_dim, num_classes)`` with weight ~ N(0, 0.01^2), bias 0 (MoCo)."""
    fc = nn.Linear(feat_dim, num_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        fc.weight.copy_(0.01 * torch.randn(fc.weight.shape, generator=g))
        fc.bias.zero_()
    return fc


def _train_batches(train_data, batch_size: int, g: torch.Generator, epoch: int):
    """One epoch of ``(images, labels, rows in the global batch)``: a seeded shuffle of a
    tensor pair cut into global batches, of which this process takes its rows
    (:func:`linear_eval.sharding.rank_rows`); or the loader's batches (a distributed loader's
    sampler already shards them)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    pair = tensor_pair(train_data) if isinstance(train_data, (tuple, list)) else None
    if pair is None:
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(epoch)
        return ((x, y, len(y) * world) for x, y in iterate_batches(train_data, batch_size))
    images, labels = pair
    perm = torch.randperm(images.shape[0], generator=g)
    return ((images[rows], labels[rows], len(batch))
            for batch in perm.split(batch_size) for rows in [rank_rows(batch, rank, world)])


def _train_epoch(fc: nn.Module, opt: torch.optim.Optimizer, backbone: nn.Module, batches,
                 transform: nn.Module, device: torch.device, precision: str
                 ) -> tuple[float, int, int]:
    """One epoch of SGD on the frozen features; returns (summed loss, correct, count) of
    this process's rows. With W processes the loss of a step is this process's summed
    cross-entropy x W / (rows of the global batch): DDP's mean of the W gradients is then
    the global batch's mean-loss gradient, whatever each process's share."""
    world = dist.get_world_size()
    loss_sum = torch.zeros((), device=device)  # accumulated on the device: no per-step sync
    hits = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    for images, labels, global_rows in batches:
        x = images.to(device, non_blocking=True)
        y = torch.as_tensor(labels).to(device, torch.long)
        with torch.no_grad():
            x = transform(x)
            with autocast(device, precision):
                f = backbone(x)
            f = f.flatten(1).float()
        logits = fc(f)
        if world == 1:
            loss = F.cross_entropy(logits, y)
        else:
            loss = F.cross_entropy(logits, y, reduction="sum") * (world / global_rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += F.cross_entropy(logits.detach(), y, reduction="sum") if world > 1 \
            else loss.detach() * y.shape[0]
        hits += (logits.detach().argmax(1) == y).sum()
        count += y.shape[0]
    return float(loss_sum), int(hits), count


@torch.no_grad()
def _evaluate(fc: nn.Module, backbone: nn.Module, test_data, batch_size: int,
              transform: nn.Module, device: torch.device, precision: str, num_classes: int
              ) -> tuple[int, int, int, list[float]]:
    """(top-1 hits, top-5 hits, count, per-class top-1 %) of the probe on the test view, over
    all processes (each evaluates the test data it was given; the counts are summed)."""
    h1 = h5 = n = 0
    correct = torch.zeros(num_classes, dtype=torch.long)
    count = torch.zeros(num_classes, dtype=torch.long)
    fc.eval()
    for images, labels in iterate_batches(test_data, batch_size):
        x = transform(images.to(device, non_blocking=True))
        with autocast(device, precision):
            f = backbone(x)
        logits = fc(f.flatten(1).float())
        y = torch.as_tensor(labels).long()
        a, b = topk_correct(logits, y)
        h1, h5, n = h1 + a, h5 + b, n + logits.shape[0]
        c, k = class_hits(logits.argmax(1), y, num_classes)
        correct, count = correct + c, count + k
    if dist.get_world_size() > 1:
        total = dist.all_reduce_sum(torch.cat([torch.tensor([h1, h5, n]), correct, count])
                                    .to(device)).cpu()
        h1, h5, n = (int(v) for v in total[:3])
        correct, count = total[3:3 + num_classes], total[3 + num_classes:]
    return h1, h5, n, per_class_accuracy(correct, count)


def _epoch_row(epoch: int, lr: float, sums: tuple[float, int, int], device: torch.device,
               writer) -> dict:
    """The history row of an epoch, from the (loss, hits, count) sums of every process."""
    loss_sum, hits, count = sums
    if dist.get_world_size() > 1:
        loss_sum, hits, count = (float(v) for v in dist.all_reduce_sum(
            torch.tensor([loss_sum, hits, count], dtype=torch.float64, device=device)))
    row = {"epoch": epoch + 1, "lr": lr, "loss": loss_sum / max(1, count),
           "train_top1": percent(hits, count), "count": count}
    for name in ("loss", "train_top1", "lr"):
        log_scalar(writer, f"{TB_EVAL}/standard_{'train_loss' if name == 'loss' else name}",
                   row[name], epoch + 1)
    return row


def standard_probe(backbone: nn.Module, feat_dim: int, num_classes: int,
                   train_data, test_data, cfg: EvalConfig, *,
                   train_transform: nn.Module, test_transform: nn.Module,
                   device: torch.device, precision: str = "fp32", seed: int = 0,
                   progress: bool = False, writer=None,
                   on_epoch_end: Callable[[int], None] | None = None) -> dict:
    """The papers' linear-evaluation protocol (module docstring). ``train_data`` /
    ``test_data``: an ``(images uint8 (N,C,H,W), labels (N,))`` pair (train is shuffled
    with a seeded generator every epoch) or a re-iterable loader of such batches.

    Returns ``linear_top1``/``linear_top5`` (percent, test centre crop), the one-row
    ``table``, per-epoch ``history``, ``selected`` {lr, wd} and ``timings``.
    """
    t0 = time.perf_counter()
    reference = snapshot_state(backbone)
    backbone.eval()  # BN frozen for the whole probe
    fc = init_linear(feat_dim, num_classes, seed).to(device)
    lr0 = linear_scaled(cfg.lr, cfg.batch_size)  # eval.batch_size is the global batch
    opt = torch.optim.SGD(fc.parameters(), lr=lr0, momentum=0.9, weight_decay=cfg.weight_decay)
    head = fc
    if dist.get_world_size() > 1:  # DDP averages the processes' gradients every step
        head = nn.parallel.DistributedDataParallel(
            fc, device_ids=[device.index] if device.type == "cuda" else None)
    g = torch.Generator().manual_seed(seed)
    history, seen = [], 0
    bar = progress_bar(cfg.epochs, "linear probe (standard)", "epoch", progress)
    t_train = time.perf_counter()
    for epoch in range(cfg.epochs):
        lr = lr_at_epoch(lr0, epoch, cfg.epochs, cfg.schedule, cfg.milestones)
        for group in opt.param_groups:
            group["lr"] = lr
        row = _epoch_row(epoch, lr, _train_epoch(
            head, opt, backbone, _train_batches(train_data, cfg.batch_size, g, epoch),
            train_transform, device, precision), device, writer)
        seen += row.pop("count")
        history.append(row)
        if bar is not None:
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_top1']:.1f}")
            bar.update(1)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    if bar is not None:
        bar.close()
    train_s = time.perf_counter() - t_train
    t_eval = time.perf_counter()
    h1, h5, n, per_class = _evaluate(fc, backbone, test_data, cfg.batch_size, test_transform,
                                     device, precision, num_classes)
    eval_s = time.perf_counter() - t_eval
    check_unchanged(backbone, reference)
    top1, top5 = percent(h1, n), percent(h5, n)
    row = {"lr": cfg.lr, "wd": cfg.weight_decay, "test_top1": top1, "test_top5": top5,
           "final_train_loss": history[-1]["loss"] if history else math.nan}
    return {"mode": "standard", "linear_top1": top1, "linear_top5": top5, "table": [row],
            "selected": {"lr": cfg.lr, "wd": cfg.weight_decay}, "effective_lr": lr0,
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "schedule": cfg.schedule,
            "history": history, "per_class": per_class,
            "timings": {"train_s": train_s, "test_s": eval_s,
                        "total_s": time.perf_counter() - t0,
                        "train_img_per_s": seen / train_s if train_s > 0 else math.nan}}
