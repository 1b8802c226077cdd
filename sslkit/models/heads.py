"""MLP projector / predictor builder shared by the MoCo methods, and the per-stream use of a
head (``batchformer.head_bn: per_stream``)."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn


def build_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, *,
              hidden_bn: bool = True, last_bn: bool = False,
              bias: bool | None = None) -> nn.Sequential:
    """MLP ``in_dim -> hidden_dim -> ... -> hidden_dim -> out_dim`` with ``num_layers`` Linear.

    Hidden layer: Linear -> BatchNorm1d (if ``hidden_bn``) -> ReLU.
    Last layer:   Linear -> BatchNorm1d(affine=False) (if ``last_bn``, as SimCLR / MoCo-v3).
    ``bias=None``: a Linear has a bias unless a BatchNorm follows it; True/False forces it.

    MoCo-v2 official head: ``build_mlp(2048, 2048, 128, 2, hidden_bn=False)``
    (Linear-ReLU-Linear, biases). MoCo-v3 ``_build_mlp``: ``hidden_bn=True, bias=False`` and
    ``last_bn=True`` (projectors, ViT predictor) or False (ResNet predictor).
    Input (B, in_dim) -> output (B, out_dim).
    """
    if num_layers < 1:
        raise ValueError(f"build_mlp: num_layers={num_layers} must be >= 1")
    layers: list[nn.Module] = []
    for i in range(num_layers):
        last = i == num_layers - 1
        d_in = in_dim if i == 0 else hidden_dim
        d_out = out_dim if last else hidden_dim
        bn = last_bn if last else hidden_bn
        layers.append(nn.Linear(d_in, d_out, bias=(not bn) if bias is None else bias))
        if last:
            if last_bn:
                layers.append(nn.BatchNorm1d(d_out, affine=False))
        else:
            if hidden_bn:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@contextlib.contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Within the block, every BatchNorm of ``module`` in training mode normalises with its
    batch statistics but leaves its running statistics (and ``num_batches_tracked``) alone:
    ``track_running_stats`` is switched off, which torch's BatchNorm and SyncBatchNorm (and
    sslkit's split BatchNorm) read as "batch statistics, no update"."""
    bns = [m for m in module.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def per_stream(head: Callable[[Tensor], Tensor], x: Tensor, n: int,
               owner: nn.Module) -> Tensor:
    """``head`` applied to the two streams of x (2n, D) on their own: ``head(x[:n])`` (the
    plain stream, exactly as the network without BatchFormer computes it, running statistics
    updated) then ``head(x[n:])`` (the BatchFormer stream, its own batch statistics, the
    running statistics of the BatchNorms of ``owner`` left alone), concatenated (2n, d).

    Every other layer of an MLP head acts on each row alone, so this is "BatchNorm per
    stream" (``batchformer.head_bn: per_stream``); in eval mode the running statistics are
    those of the plain stream, i.e. of the network the export keeps."""
    plain = head(x[:n])
    with running_stats_frozen(owner):
        second = head(x[n:])
    return torch.cat([plain, second])
