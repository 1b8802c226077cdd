"""MoCo-v3 (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised ViTs")
with optional BatchFormer.

Online branch:   x -> backbone -> h (B, D) -> [BatchFormer, training only: (2B, D)]
                   -> projector -> predictor -> q (S*B, d)      S = 2 streams with BF
Momentum branch: x -> momentum_backbone -> momentum_projector -> k (B, d), no gradient,
                 no predictor, no BatchFormer; keys all-gathered over processes.
Loss (symmetric): ctr(q1, k2) + ctr(q2, k1), ctr = 2T * cross-entropy of q against the
gathered keys with this rank's own key as the positive (row i pairs with k[rank*B + i mod B]).
The engine calls :meth:`momentum_update` right after ``optimizer.step()`` with
m = :func:`cosine_momentum` (0.99 -> 1).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sslkit import distributed as dist
from sslkit.config import BatchFormerConfig, MethodConfig
from sslkit.losses import moco_v3_loss, moco_v3_similarities
from sslkit.methods.base import MomentumEncoder
from sslkit.models.batchformer import BatchFormer
from sslkit.models.heads import build_mlp


def cosine_momentum(step: int, total_steps: int, base: float = 0.99,
                    final: float = 1.0) -> float:
    """MoCo-v3's momentum schedule: final - (final - base) * (cos(pi * step / total) + 1) / 2.

    Equals ``base`` at step 0 and ``final`` at ``total_steps`` (and beyond).
    """
    if total_steps <= 0 or step >= total_steps:
        return float(final)
    return final - (final - base) * (math.cos(math.pi * step / total_steps) + 1) / 2


def _has_attention(module: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) for m in module.modules())


class MoCoV3(MomentumEncoder):
    """MoCo-v3. ``forward(view1, view2) -> (loss, stats)``.

    Heads follow the official ``_build_mlp`` (Linear layers without bias, BN + ReLU hidden):
    projector ``proj_layers`` layers (2 ResNet, 3 ViT) ending in BN(affine=False); predictor
    2 layers ending in BN(affine=False) for a ViT, plain Linear for a ResNet. ``vit=None``
    detects a transformer backbone (one containing nn.MultiheadAttention).
    With BatchFormer both streams pass the shared projector and predictor; each ctr is the
    mean over the 2B rows (the average of the streams: ``loss_plain`` / ``loss_bf``).
    Stats ``pos_sim`` / ``neg_sim``: mean cosine of q with its own key / the other gathered
    keys, on the plain stream, averaged over the two directions.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, method: MethodConfig,
                 batchformer: BatchFormerConfig, *, vit: bool | None = None):
        super().__init__()
        self.temperature = float(method.temperature)
        self.bf_scope = batchformer.scope
        vit = _has_attention(backbone) if vit is None else vit

        self.backbone = backbone  # the exportable encoder: state-dict keys 'backbone.*'
        self.batchformer = (BatchFormer(feat_dim, batchformer.heads, batchformer.ffn_dim,
                                        batchformer.dropout, batchformer.layers)
                            if batchformer.enabled else None)
        self.projector = build_mlp(feat_dim, method.proj_hidden_dim, method.proj_dim,
                                   method.proj_layers, hidden_bn=bool(method.proj_bn),
                                   last_bn=True, bias=False)
        self.predictor = build_mlp(method.proj_dim, method.pred_hidden_dim, method.proj_dim, 2,
                                   hidden_bn=True, last_bn=vit, bias=False)

        # Momentum encoder: a copy of backbone + projector, no gradient, no predictor, no BF.
        self._init_momentum_encoder()

    # ------------------------------------------------------------------ branches
    def _queries(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> predictions (S*B, d); BF only in training."""
        h = self.backbone(x)  # (B, D)
        if self.batchformer is not None and self.training:
            h = self.batchformer(h, scope=self.bf_scope)  # (2B, D), plain rows first
        return self.predictor(self.projector(h))

    @torch.no_grad()
    def _keys(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> keys of every process (W*B, d), rank order."""
        return dist.all_gather(self.momentum_projector(self.momentum_backbone(x)))

    # ------------------------------------------------------------------ forward
    def _contrast(self, q: Tensor, k: Tensor, b: int) -> dict[str, Tensor]:
        """ctr(q (S*B, d), gathered k (W*B, d)); per-stream losses when S = 2."""
        rank, world = dist.get_rank(), dist.get_world_size()
        ctr = lambda rows: moco_v3_loss(rows, k, self.temperature, rank, world)  # noqa: E731
        pos, neg = moco_v3_similarities(q[:b], k, rank, world)  # plain stream
        out = {"pos_sim": pos, "neg_sim": neg}
        if q.shape[0] == b:
            out["loss"] = ctr(q)
        else:  # mean over the 2B rows == average of the two streams' means
            out["loss_plain"], out["loss_bf"] = ctr(q[:b]), ctr(q[b:])
            out["loss"] = (out["loss_plain"] + out["loss_bf"]) / 2
        return out

    def forward(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """view1, view2 (B, C, H, W) -> (loss, stats); stats are detached 0-dim tensors."""
        b = view1.shape[0]
        q1, q2 = self._queries(view1), self._queries(view2)
        k1, k2 = self._keys(view1), self._keys(view2)
        parts = [self._contrast(q1, k2, b), self._contrast(q2, k1, b)]
        loss = parts[0]["loss"] + parts[1]["loss"]
        stats = {name: (parts[0][name] + parts[1][name]).detach() for name in parts[0]
                 if name != "loss"}
        for name in ("pos_sim", "neg_sim"):  # similarities: mean over the two directions
            stats[name] = stats[name] / 2
        return loss, stats
