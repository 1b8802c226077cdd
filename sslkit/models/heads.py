"""MLP projector / predictor builder shared by the MoCo methods."""
from __future__ import annotations

from torch import nn


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
