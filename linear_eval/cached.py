"""The fast linear probe on cached features: (our fast mode; hyper-parameters selected on held-out train data, never on test)
    Features are extracted once (plus eval.aug_copies augmented copies of train). A
    stratified, seeded eval.val_fraction of train is held out. Features are standardised
    (per-dimension mean / std of the fitting set; the BN-without-affine trick of MAE's linear
    probing): it makes one LR grid fit every backbone and raw pixels alike. All heads of
    eval.lr_grid x eval.wd_grid are trained together: weights stacked as (D, H, C), one
    matmul per step, softmax-cross-entropy gradients written out by hand, per-head SGD with
    momentum 0.9, lr_h x batch/256 and weight decay wd_h, the schedule of eval.schedule. The
    head with the best held-out top-1 (first in grid order on ties) is selected, then (by
    default) retrained with its (lr, wd) on the whole train set and reported on test.
"""
from __future__ import annotations

import contextlib
import time
from typing import Sequence

import torch

from linear_eval.common import class_hits, log_scalar, lr_at_epoch, per_class_accuracy
from sslkit.config import EvalConfig
from sslkit.train.metrics import TB_EVAL, progress_bar
from sslkit.train.optim import linear_scaled


def stratified_split(labels: torch.Tensor, fraction: float, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit_idx, val_idx): per class, ``round(fraction * n_c)`` seeded-random rows are held
    out (at least 1 when the class has >= 2 rows; none for a single-row class)."""
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    fit, val = [], []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_val = 0 if idx.numel() < 2 else min(idx.numel() - 1,
                                              max(1, round(fraction * idx.numel())))
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return torch.cat(fit).sort().values, torch.cat(val).sort().values


class Standardizer:
    """x -> (x - mean) / std with per-dimension statistics of the fitting set."""

    def __init__(self, x: torch.Tensor, eps: float = 1e-6):
        x = x.double()
        self.mean = x.mean(0).float()
        self.std = x.std(0, unbiased=False).clamp_min(eps).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def _softmax(z: torch.Tensor) -> torch.Tensor:
    """softmax over the last dim, written out: torch.softmax over a short last dim (C=10)
    was 5x slower on the CPU here. Overwrites nothing; returns a new tensor."""
    e = (z - z.amax(-1, keepdim=True)).exp_()
    return e.div_(e.sum(-1, keepdim=True))


class LinearHeads:
    """H linear heads trained at once by SGD with momentum, each with its own lr and wd.

    W (D, H, C), b (H, C). For a batch X (B, D) with labels y: logits (B, H, C) = X W + b;
    loss_h = mean_i CE(logits[i, h], y_i); the hand-written gradient is
    dW[:, h] = X^T (softmax(logits[:, h]) - onehot(y)) / B (+ wd_h W[:, h]), likewise db.
    Update (torch.optim.SGD, dampening 0): buf = 0.9 buf + g; W -= lr_h buf.
    """

    def __init__(self, dim: int, num_classes: int, lrs: Sequence[float],
                 wds: Sequence[float], momentum: float = 0.9, seed: int = 0,
                 device: torch.device | str = "cpu"):
        h = len(lrs)
        g = torch.Generator().manual_seed(seed)
        w0 = 0.01 * torch.randn(dim, num_classes, generator=g)  # same init for every head
        self.W = w0[:, None, :].repeat(1, h, 1).to(device)  # (D, H, C)
        self.b = torch.zeros(h, num_classes, device=device)  # (H, C)
        self.base_lr = torch.tensor(list(lrs), dtype=torch.float32, device=device)  # (H,)
        self.wd = torch.tensor(list(wds), dtype=torch.float32, device=device)  # (H,)
        self.momentum = momentum
        self.bW = torch.zeros_like(self.W)
        self.bb = torch.zeros_like(self.b)
        self.alive = torch.ones(h, dtype=torch.bool, device=device)
        self.num_classes = num_classes
        self.any_wd = bool((self.wd != 0).any())
        self._neg: torch.Tensor | None = None

    @property
    def num_heads(self) -> int:
        return self.b.shape[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, H, C)."""
        d, h, c = self.W.shape
        return (x @ self.W.reshape(d, h * c)).view(-1, h, c) + self.b

    def step(self, x: torch.Tensor, y: torch.Tensor, lr_factor: float,
             with_loss: bool = False) -> torch.Tensor | None:
        """One SGD step on the batch x (B, D), y (B,); returns the per-head mean loss (H,)
        of the batch (before the step) when ``with_loss``."""
        d, h, c = self.W.shape
        logits = self.logits(x)  # (B, H, C)
        idx = y.view(-1, 1, 1).expand(-1, h, 1)
        loss = None
        if with_loss:
            loss = (torch.logsumexp(logits, -1) - logits.gather(-1, idx).squeeze(-1)).mean(0)
        grad = _softmax(logits)
        grad.scatter_add_(-1, idx, self._minus_one(x.shape[0], x.device))
        grad /= x.shape[0]  # (B, H, C) = (softmax - onehot) / B
        gW = (x.T @ grad.view(-1, h * c)).view(d, h, c)  # (D, H, C)
        gb = grad.sum(0)  # (H, C)
        if self.any_wd:
            gW += self.wd[:, None] * self.W
            gb += self.wd[:, None] * self.b
        lr = self.base_lr * (lr_factor * self.alive)  # (H,)
        self.bW.mul_(self.momentum).add_(gW)
        self.bb.mul_(self.momentum).add_(gb)
        self.W.sub_(lr[:, None] * self.bW)
        self.b.sub_(lr[:, None] * self.bb)
        return loss

    def _minus_one(self, b: int, device) -> torch.Tensor:
        if self._neg is None or self._neg.shape[0] != b:
            self._neg = torch.full((b, self.num_heads, 1), -1.0, device=device)
        return self._neg

    def kill_diverged(self) -> None:
        """Heads with non-finite weights stop training (their predictions become constant)."""
        bad = ~(torch.isfinite(self.W).all(0).all(-1) & torch.isfinite(self.b).all(-1))
        if bad.any():
            self.alive &= ~bad
            for t in (self.W, self.bW):
                t[:, bad] = 0.0
            for t in (self.b, self.bb):
                t[bad] = 0.0

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head (top-1, top-5) accuracy in percent, each (H,)."""
        h = self.num_heads
        maxk = min(5, self.num_classes)
        h1 = torch.zeros(h)
        h5 = torch.zeros(h)
        for s in range(0, x.shape[0], chunk):
            logits = self.logits(x[s:s + chunk])  # (b, H, C)
            pred = logits.topk(maxk, dim=-1).indices  # (b, H, maxk)
            hit = (pred == y[s:s + chunk].view(-1, 1, 1)).cpu()
            h1 += hit[..., :1].any(-1).sum(0)
            h5 += hit.any(-1).sum(0)
        n = max(1, x.shape[0])
        dead = ~self.alive.cpu()
        h1[dead] = 0.0
        h5[dead] = 0.0
        return 100.0 * h1 / n, 100.0 * h5 / n


@torch.no_grad()
def predict(heads: LinearHeads, x: torch.Tensor, head: int, chunk: int = 8192) -> torch.Tensor:
    """Top-1 class of each row of ``x`` (N, D) by head ``head``: (N,) int64."""
    return torch.cat([heads.logits(x[s:s + chunk])[:, head].argmax(-1).cpu()
                      for s in range(0, x.shape[0], chunk)])


@contextlib.contextmanager
def _threads_for(flops_per_step: float, device):
    """One CPU thread for tiny steps: below ~5 MFLOP a step is a string of small ops whose
    thread synchronisation costs more than it saves (and stalls badly when the cores are
    shared: a 1-head refit ran 10x slower with 2 threads on a busy 2-core machine)."""
    if torch.device(device).type != "cpu" or flops_per_step >= 5e6:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_heads(x: torch.Tensor, y: torch.Tensor, num_classes: int, lrs: Sequence[float],
                wds: Sequence[float], cfg: EvalConfig, seed: int = 0, progress: bool = False,
                desc: str = "linear heads", writer=None, tag: str = "") -> LinearHeads:
    """Train one head per (lr, wd) pair on standardised features x (N, D), labels y (N,):
    eval.epochs epochs of shuffled mini-batches of eval.batch_size, eval.schedule."""
    heads = LinearHeads(x.shape[1], num_classes, [linear_scaled(lr, cfg.batch_size) for lr in lrs],
                        wds, seed=seed, device=x.device)
    g = torch.Generator().manual_seed(seed + 1)
    bar = progress_bar(cfg.epochs, desc, "epoch", progress)
    n = x.shape[0]
    flops = 4.0 * min(cfg.batch_size, n) * x.shape[1] * heads.num_heads * num_classes
    with _threads_for(flops, x.device):
        _run_epochs(heads, x, y, cfg, g, bar, writer, tag)
    if bar is not None:
        bar.close()
    return heads


def _run_epochs(heads: LinearHeads, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig,
                g: torch.Generator, bar, writer, tag: str) -> None:
    n = x.shape[0]
    for epoch in range(cfg.epochs):
        factor = lr_at_epoch(1.0, epoch, cfg.epochs, cfg.schedule, cfg.milestones)
        perm = torch.randperm(n, generator=g).to(x.device)
        batches = perm.split(cfg.batch_size)
        for i, idx in enumerate(batches):
            loss = heads.step(x[idx], y[idx], factor, with_loss=i == len(batches) - 1)
        heads.kill_diverged()
        if writer is not None and heads.num_heads == 1:  # loss of the epoch's last batch
            log_scalar(writer, f"{tag}/last_batch_loss", float(loss[0]), epoch + 1)
        if bar is not None:
            bar.update(1)


def cached_probe(train_features: torch.Tensor, train_labels: torch.Tensor,
                 test_features: torch.Tensor, test_labels: torch.Tensor, num_classes: int,
                 cfg: EvalConfig, *, aug_features: Sequence[torch.Tensor] = (), seed: int = 0,
                 refit: bool = True, device: torch.device | str = "cpu",
                 progress: bool = False, writer=None) -> dict:
    """Fast probe on cached features (module docstring).

    train_features (N, D), train_labels (N,), test_features (M, D), test_labels (M,);
    ``aug_features``: augmented copies of the train features, each (N, D), row-aligned with
    ``train_features`` (only the fitting rows' copies are used for the grid; all for refit).
    Returns ``linear_top1``/``linear_top5`` (test, percent), ``table`` (one row per
    (lr, wd): held-out top-1/top-5, diverged flag), ``selected`` {lr, wd} and ``timings``.
    """
    t0 = time.perf_counter()
    y_all = train_labels.long().cpu()
    fit_idx, val_idx = stratified_split(y_all, cfg.val_fraction, seed)
    feats = [train_features.float().cpu()] + [a.float().cpu() for a in aug_features]
    fit_x = torch.cat([f[fit_idx] for f in feats])
    fit_y = y_all[fit_idx].repeat(len(feats))
    norm = Standardizer(fit_x)
    grid = [(lr, wd) for lr in cfg.lr_grid for wd in cfg.wd_grid]
    heads = train_heads(norm(fit_x).to(device), fit_y.to(device), num_classes,
                        [lr for lr, _ in grid], [wd for _, wd in grid], cfg, seed,
                        progress, desc=f"linear probe (cached, {len(grid)} heads)")
    grid_s = time.perf_counter() - t0
    v1, v5 = heads.accuracy(norm(train_features[val_idx]).to(device), y_all[val_idx].to(device))
    table = [{"lr": lr, "wd": wd, "val_top1": float(v1[i]), "val_top5": float(v5[i]),
              "diverged": not bool(heads.alive[i])} for i, (lr, wd) in enumerate(grid)]
    best = int(torch.argmax(v1))  # first maximum: grid order breaks ties
    lr, wd = grid[best]

    t_refit = time.perf_counter()
    if refit:
        all_x = torch.cat(feats)
        norm = Standardizer(all_x)
        final = train_heads(norm(all_x).to(device), y_all.repeat(len(feats)).to(device),
                            num_classes, [lr], [wd], cfg, seed, progress,
                            desc="linear probe (cached, refit)", writer=writer,
                            tag=f"{TB_EVAL}/cached_refit")
        head = 0
    else:
        final, head = heads, best
    test_x = norm(test_features).to(device)
    t1, t5 = final.accuracy(test_x, test_labels.long().to(device))
    per_class = per_class_accuracy(*class_hits(predict(final, test_x, head), test_labels,
                                               num_classes))
    refit_s = time.perf_counter() - t_refit
    return {"mode": "cached", "linear_top1": float(t1[head]), "linear_top5": float(t5[head]),
            "table": table, "selected": {"lr": lr, "wd": wd,
                                         "val_top1": table[best]["val_top1"]},
            "refit": refit, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "schedule": cfg.schedule, "normalisation": "standardise",
            "num_fit": int(fit_x.shape[0]), "num_val": int(val_idx.numel()),
            "aug_copies": len(aug_features), "per_class": per_class,
            "timings": {"grid_s": grid_s, "refit_and_test_s": refit_s,
                        "total_s": time.perf_counter() - t0}}
