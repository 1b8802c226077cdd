"""BatchFormer (v1) and BatchFormerV2: transformer encoders across the samples of a mini-batch.

Hou, Yu & Tao, "BatchFormer: Learning to Explore Sample Relationships for Robust
Representation Learning", CVPR 2022. The B feature vectors of a batch form ONE sequence of
length B (no position embedding, so the module is permutation-equivariant); in training the
plain features and the encoded ones are concatenated into two streams that share the heads,
and at test time the module is dropped (zero inference cost).

BatchFormerV2 (Hou, Yu & Tao, arXiv 2204.01254; TPAMI 2025, "Learning to Explore Sample
Relationships"; github.com/zhihou7/BatchFormer, batchformer-v2/deit_share and detr) moves the
same layer between two transformer blocks: at every token position (class token included)
the B samples' tokens attend to each other. At the first insertion point the tokens x (B, L, D)
become cat([x, BF(x)]) (2B rows, the plain stream first) and every later block runs on both
streams; a later insertion point applies BF to the second stream only (as the authors' DETR
code; their DeiT code forgets to duplicate the batch at the first point, which we do not copy).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from sslkit import distributed as dist
from sslkit.errors import ConfigError


def default_insert_after(depth: int) -> list[int]:
    """BatchFormerV2's default placement for a ViT of ``depth`` blocks: after block
    ``depth - 1 - round(depth / 4)`` (halves round up), so that the last quarter of the blocks
    runs on both streams. 12 blocks: [8], the authors' DeiT placement (Hou et al.,
    github.com/zhihou7/BatchFormer, batchformer-v2/deit_share); 6: [3]; 4: [2]; 1: [0]."""
    return [depth - 1 - int(math.floor(depth / 4 + 0.5))]


def v2_needs_vit(backbone: str) -> ConfigError:
    """The error for BatchFormerV2 on a backbone that is no ViT."""
    return ConfigError(f"batchformer.version=v2 needs a ViT backbone (model.backbone=vit_tiny, "
                       f"vit_small or vit_base): it runs between transformer blocks, and "
                       f"model.backbone={backbone} has none; use batchformer.version=v1 with it")


def v2_not_on_timm(backbone: str) -> ConfigError:
    """The error for BatchFormerV2 on a timm model: it runs between the blocks of sslkit's own
    ViTs (``ViTBackbone.forward_with``), which a timm model does not have."""
    return ConfigError(f"batchformer.version=v2 runs between the blocks of sslkit's own ViTs "
                       f"(model.backbone=vit_tiny, vit_small or vit_base), not inside the timm "
                       f"model model.backbone={backbone}; use batchformer.version=v1 with it, "
                       f"or an sslkit ViT")


def insertion_points(insert_after: Optional[list[int]], depth: int) -> list[int]:
    """BatchFormerV2's insertion points (sorted) for a ViT of ``depth`` blocks: the 0-based
    indices of ``batchformer.insert_after``, or :func:`default_insert_after` for null."""
    points = default_insert_after(depth) if insert_after is None else list(insert_after)
    shown = "[" + ", ".join(str(i) for i in points) + "]"
    if not points:
        raise ConfigError(f"batchformer.insert_after=[] names no block; give 0-based block "
                          f"indices in 0..{depth - 1}, or null for the default "
                          f"{default_insert_after(depth)}")
    bad = [i for i in points if not 0 <= i < depth]
    if bad:
        raise ConfigError(f"batchformer.insert_after={shown} is out of range: the ViT "
                          f"has {depth} blocks, so the 0-based indices must be in "
                          f"0..{depth - 1} (default {default_insert_after(depth)})")
    if len(set(points)) != len(points):
        raise ConfigError(f"batchformer.insert_after={shown} names a block twice; "
                          f"name each block once")
    return sorted(points)


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
        """(B, D) -> (B, D): every sample attends to every sample of ``h``.

        Tokens (B, L, D) -> (B, L, D): at each position l the B tokens ``h[:, l]`` form one
        sequence (BatchFormerV2; the positions do not see each other)."""
        if h.dim() == 2:
            return self.encoder(h[None])[0]  # one sequence: (1, B, D)
        return self.encoder(h.transpose(0, 1)).transpose(0, 1)  # L sequences: (L, B, D)

    def mix(self, h: Tensor, scope: str = "local") -> Tensor:
        """The encoded rows of ``h`` (B, ...), over this process's batch (``local``) or over
        the batch gathered from every process (``global``: gradients flow back to each
        process's own rows, and this process's B encoded rows are kept)."""
        if scope == "global" and dist.get_world_size() > 1:
            b, r = h.shape[0], dist.get_rank()
            return self.encode(dist.all_gather_with_grad(h))[r * b:(r + 1) * b]
        return self.encode(h)

    def forward(self, h: Tensor, scope: str = "local") -> Tensor:
        """h (B, D) -> (2B, D) in training, h in eval (see :meth:`mix` for ``scope``)."""
        if not self.training:
            return h
        return torch.cat([h, self.mix(h, scope)], dim=0)


class BatchFormerV2(nn.Module):
    """BatchFormerV2 for a ViT of ``depth`` blocks (an :class:`~sslkit.models.backbones.
    ViTBackbone`; the module holds no part of it, so the backbone exports alone).

    ``insert_after``: 0-based blocks followed by the module (None:
    :func:`default_insert_after`, [8] for 12 blocks). ``shared``: one
    :class:`BatchFormer` reused at every point (``blocks.0``), else one per point
    (``blocks.k`` for the k-th point). The encoder runs in fp32 under autocast: sslkit's
    choice (the authors' code does so only with ``--no_fp16_bt``, off by default).

    train: forward(vit, x (B, C, H, W)) -> class-token features (2B, D), plain stream first.
    eval:  forward(vit, x) -> vit(x) (B, D).
    """

    def __init__(self, dim: int, depth: int, insert_after: Optional[list[int]] = None,
                 shared: bool = True, heads: int = 4, ffn_dim: int | None = None,
                 dropout: float = 0.5, layers: int = 1):
        super().__init__()
        self.insert_after = insertion_points(insert_after, depth)
        self.shared = shared
        n = 1 if shared else len(self.insert_after)
        self.blocks = nn.ModuleList(BatchFormer(dim, heads, ffn_dim, dropout, layers)
                                    for _ in range(n))

    def mix_tokens(self, k: int, x: Tensor, scope: str = "local") -> Tensor:
        """At the k-th insertion point: (B, L, D) -> cat([x, BF(x)]) (2B, L, D) for k = 0;
        (2B, L, D) -> cat([plain, BF(second)]) for k > 0 (the plain stream passes)."""
        bf = self.blocks[0 if self.shared else k]
        if k == 0:
            plain = second = x
        else:
            plain, second = x.chunk(2)
        with torch.autocast(x.device.type, enabled=False):
            encoded = bf.mix(second.float(), scope)
        return torch.cat([plain, encoded.to(x.dtype)], dim=0)

    def forward(self, vit: nn.Module, x: Tensor, scope: str = "local") -> Tensor:
        if not self.training:
            return vit(x)
        index = {block: k for k, block in enumerate(self.insert_after)}

        def after_block(i: int, tokens: Tensor) -> Tensor:
            return self.mix_tokens(index[i], tokens, scope) if i in index else tokens

        return vit.forward_with(x, after_block)
