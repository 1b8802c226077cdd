"""BatchFormer: a transformer encoder across the samples of a mini-batch.

Hou, Yu & Tao, "BatchFormer: Learning to Explore Sample Relationships for Robust
Representation Learning", CVPR 2022. The B feature vectors of a batch form ONE sequence of
length B (no position embedding, so the module is permutation-equivariant); in training the
plain features and the encoded ones are concatenated into two streams that share the heads,
and at test time the module is dropped (zero inference cost).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sslkit import distributed as dist
from sslkit.errors import ConfigError


class BatchFormer(nn.Module):
    """``layers`` post-norm ReLU TransformerEncoderLayer(d_model=dim, nhead=heads,
    dim_feedforward=ffn_dim or dim, dropout) attending along the batch.

    train: forward(h (B, D)) -> cat([h, encode(h)]) (2B, D), the plain stream first.
    eval:  forward(h) -> h (the very same tensor).
    """

    def __init__(self, dim: int, heads: int = 4, ffn_dim: int | None = None,
                 dropout: float = 0.5, layers: int = 1):
        super().__init__()
        if heads < 1 or dim % heads:
            ok = max(d for d in range(1, max(heads, 1) + 1) if dim % d == 0)
            raise ConfigError(f"batchformer.heads={heads} must divide the backbone feature dim "
                              f"{dim}; e.g. --set batchformer.heads={ok}")
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ffn_dim or dim,
                                           dropout=dropout, activation="relu",
                                           batch_first=True, norm_first=False)
        # No nested-tensor conversion: the sequence has no padding and results must not change.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def encode(self, h: Tensor) -> Tensor:
        """(B, D) -> (B, D): every sample attends to every sample of ``h``."""
        return self.encoder(h[None])[0]  # one sequence: (1, B, D)

    def forward(self, h: Tensor, scope: str = "local") -> Tensor:
        """h (B, D) -> (2B, D) in training, h in eval.

        ``scope="global"`` attends over the batch gathered from every process (gradients
        flow back to each process's own rows) and keeps this process's B encoded rows.
        """
        if not self.training:
            return h
        if scope == "global" and dist.get_world_size() > 1:
            b, r = h.shape[0], dist.get_rank()
            encoded = self.encode(dist.all_gather_with_grad(h))[r * b:(r + 1) * b]
        else:
            encoded = self.encode(h)
        return torch.cat([h, encoded], dim=0)
