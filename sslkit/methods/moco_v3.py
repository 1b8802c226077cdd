"""MoCo-v3 (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers"; facebookresearch/moco-v3) with optional BatchFormer.

Queries: :class:`~sslkit.methods.base.MoCoBase` (backbone -> [BatchFormer] -> projector ->
predictor). Keys: the momentum encoder (no predictor, no BatchFormer), all-gathered over
processes. Loss (symmetric): ctr(q1, k2) + ctr(q2, k1), ctr = 2T * cross-entropy of q against
the gathered keys with this rank's own key as the positive (row i pairs with
k[rank*B + i mod B]). Each training step ends with :meth:`momentum_update`, after the
optimizer's and the LR schedule's steps (:class:`sslkit.train.step.TrainStep`), with m =
:func:`sslkit.train.optim.cosine_momentum` (0.99 -> 1) of that step; the official code updates
inside the forward pass, before the keys (docs/recipes.md: the key encoder averages the
same sequence of online weights; the momentum schedule's index is shifted by one step).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sslkit import distributed as dist
from sslkit.config import BatchFormerConfig, Config, MethodConfig
from sslkit.losses import moco_v3_loss, moco_v3_similarities
from sslkit.methods.base import MoCoBase, Stats
from sslkit.methods.registry import register
from sslkit.models.backbones import is_vit
from sslkit.models.heads import build_mlp


def _has_attention(module: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) for m in module.modules())


@register("mocov3")
class MoCoV3(MoCoBase):
    """MoCo-v3. ``forward(view1, view2) -> (loss, stats)``.

    Heads follow the official ``_build_mlp`` (Linear layers without bias, BN + ReLU hidden):
    projector ``proj_layers`` layers (2 ResNet, 3 ViT) ending in BN(affine=False); predictor
    2 layers ending in BN(affine=False) for a ViT, plain Linear for a ResNet. ``vit=None``
    detects a transformer backbone (one containing nn.MultiheadAttention).
    Stats ``pos_sim`` / ``neg_sim``: mean cosine of q with its own key / the other gathered
    keys, on the plain stream, averaged over the two directions.
    """

    augment_preset, augment_preset_small = "mocov3", "mocov3_small"

    @classmethod
    def paper_defaults(cls, vit: bool, feat_dim: int) -> dict:
        """MoCo-v3's values for the method keys left null (facebookresearch/moco-v3
        main_moco.py, builder.py): T = 1.0 for a ResNet, 0.2 for a ViT; m cosine 0.99 -> 1;
        projector 4096-256 (2 layers ResNet, 3 ViT) with BN; predictor 4096 wide."""
        return dict(temperature=0.2 if vit else 1.0, queue_size=None, momentum=0.99,
                    momentum_schedule="cosine", proj_dim=256, proj_hidden_dim=4096,
                    proj_layers=3 if vit else 2, proj_bn=True, pred_hidden_dim=4096)

    @classmethod
    def from_config(cls, cfg: Config, backbone: nn.Module, feat_dim: int) -> "MoCoV3":
        """The heads of a ViT differ (a timm ViT is one without nn.MultiheadAttention)."""
        return cls(backbone, feat_dim, cfg.method, cfg.batchformer,
                   vit=is_vit(cfg.model.backbone))

    def __init__(self, backbone: nn.Module, feat_dim: int, method: MethodConfig,
                 batchformer: BatchFormerConfig, *, vit: bool | None = None):
        super().__init__(backbone, feat_dim, batchformer)
        self.temperature = float(method.temperature)
        vit = _has_attention(backbone) if vit is None else vit
        self.projector = build_mlp(feat_dim, method.proj_hidden_dim, method.proj_dim,
                                   method.proj_layers, hidden_bn=bool(method.proj_bn),
                                   last_bn=True, bias=False)
        self.predictor = build_mlp(method.proj_dim, method.pred_hidden_dim, method.proj_dim, 2,
                                   hidden_bn=True, last_bn=vit, bias=False)
        self._init_momentum_encoder()

    def _heads(self, h: Tensor) -> Tensor:
        return self.predictor(self.projector(h))

    @torch.no_grad()
    def _keys(self, x: Tensor) -> list[Tensor]:
        """Images (B, C, H, W) -> keys of every process (W*B, d), rank order; one tensor per
        key stream (two with ``batchformer.keys: both``, each gathered on its own)."""
        return [dist.all_gather(k) for k in self.encode_keys(x).split(x.shape[0])]

    def _term(self, q: Tensor, keys: list[Tensor], b: int) -> Stats:
        """ctr(q (S*B, d), gathered k (W*B, d)) for every key stream."""
        rank, world = dist.get_rank(), dist.get_world_size()
        return self._contrast(
            q, b, keys, lambda rows, k: moco_v3_loss(rows, k, self.temperature, rank, world),
            lambda rows, k: moco_v3_similarities(rows, k, rank, world))

    def forward(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, Stats]:
        """view1, view2 (B, C, H, W) -> (loss, stats); stats are detached 0-dim tensors."""
        b = view1.shape[0]
        q1, q2 = self._queries(view1), self._queries(view2)
        k1, k2 = self._keys(view1), self._keys(view2)
        self._observe(q1, k2[0][dist.get_rank() * b:(dist.get_rank() + 1) * b])  # own keys
        return self._merge([self._term(q1, k2, b), self._term(q2, k1, b)])
