"""What MoCo-v2 and MoCo-v3 share: the online encoder with an optional BatchFormer, the
momentum (key) encoder that follows it, the two-stream contrast and the stats merge.

Online branch:   x -> backbone -> h (B, D) -> [BatchFormer, training only: (2B, D), the plain
                 rows first] -> heads (projector; + predictor for MoCo-v3) -> q (S*B, d)
                 BatchFormerV2 (ViT only) sits between two transformer blocks instead:
                 x -> blocks 0..i -> tokens (B, L, D) -> cat([t, BF(t)]) -> blocks i+1.. on 2B
                 rows -> h (2B, D) -> heads.
Momentum branch: an EMA copy of backbone + projector, no gradient; no BatchFormer, unless
                 ``batchformer.keys: both`` (then the same BatchFormer module, no gradient).

BatchFormer: Hou, Yu & Tao, CVPR 2022 (github.com/zhihou7/BatchFormer); BatchFormerV2: arXiv
2204.01254. Both streams share the heads and the momentum keys. The scheme keys:

* ``keys`` (plain | both): which key streams the queries meet;
* ``loss_reduction`` (mean | sum): how the query stream x key stream terms of a direction
  combine (:mod:`sslkit.methods.streams`; reported per query stream as ``loss_plain`` /
  ``loss_bf``);
* ``head_bn`` (joint | per_stream): whether the heads' BatchNorm sees both streams' 2B rows
  at once, or each stream on its own (:func:`sslkit.models.heads.per_stream`: the plain
  stream then computes exactly the network without BatchFormer; running statistics from the
  plain stream only);
* ``frozen``: the BatchFormer stays at its random initialisation (no gradient, no optimizer
  group, never in the EMA, which covers backbone + projector only; still in the state dict).

The BatchFormer's parameters live here (``batchformer.*``), never in the backbone, and a
trained BatchFormer forms its own optimizer group (``batchformer.lr_scale``,
``batchformer.weight_decay``; see :func:`sslkit.train.optim.param_groups`).
"""
from __future__ import annotations

import copy
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

from sslkit.config import BatchFormerConfig, Config
from sslkit.methods.streams import Stats, contrast, merge
from sslkit.models.batchformer import BatchFormer, BatchFormerV2, v2_needs_vit
from sslkit.models.heads import per_stream

__all__ = ["MoCoBase", "Stats"]


class MicroBackbones(Protocol):
    """How the backbones run for ``train.micro_batch`` (:mod:`sslkit.train.microbatch`)."""

    def online(self, x: Tensor) -> Tensor: ...

    def keys(self, x: Tensor) -> Tensor: ...


class MoCoBase(nn.Module):
    """Base of the MoCo methods. Subclasses build ``projector`` (and more heads) after calling
    ``super().__init__``, then :meth:`_init_momentum_encoder`, and override :meth:`_heads`
    when the queries pass more than the projector.

    What a method's name implies lives on its class, and a subclass inherits it unless it
    sets its own: the augmentation presets (:data:`augment_preset` for images above 64 px,
    :data:`augment_preset_small` up to 64 px; names in :data:`sslkit.augment.PRESETS`), the
    paper's values for the method keys left null (:meth:`paper_defaults`), the rules of a
    config (:meth:`check_config`) and the construction from a resolved config
    (:meth:`from_config`).
    """

    projector: nn.Module
    accumulates_plainly = False  # micro-batches need the gradient cache (train.micro_batch)
    augment_preset = "mocov2"
    augment_preset_small = "mocov2_small"

    @classmethod
    def preset_for(cls, image_size: int) -> str:
        """The augmentation preset ``augment.preset: auto`` means at ``image_size``."""
        return cls.augment_preset_small if image_size <= 64 else cls.augment_preset

    @classmethod
    def paper_defaults(cls, vit: bool, feat_dim: int) -> dict:
        """The method's values for the ``method.*`` keys left null, for a ViT or a ResNet
        backbone of ``feat_dim`` features."""
        raise NotImplementedError(f"{cls.__qualname__} sets no paper defaults")

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """The method's rules of a resolved config (one-line ConfigErrors); none by default."""

    @classmethod
    def from_config(cls, cfg: Config, backbone: nn.Module, feat_dim: int) -> "MoCoBase":
        """The method around ``backbone`` (``feat_dim`` features) for the resolved ``cfg``."""
        return cls(backbone, feat_dim, cfg.method, cfg.batchformer)

    def __init__(self, backbone: nn.Module, feat_dim: int, batchformer: BatchFormerConfig):
        super().__init__()
        self.bf_scope = batchformer.scope
        self.keys_both = batchformer.enabled and batchformer.keys == "both"
        self.loss_reduction = batchformer.loss_reduction if batchformer.enabled else "mean"
        self.head_bn_per_stream = batchformer.enabled and batchformer.head_bn == "per_stream"
        self.backbone = backbone  # the exportable encoder: state-dict keys 'backbone.*'
        self.batchformer = self._build_batchformer(batchformer, feat_dim)
        self.features: Tensor | None = None  # the last batch's plain features (online probe)
        # set by the training step for train.micro_batch: how the backbones run (in pieces)
        self.micro: MicroBackbones | None = None
        self.observed: tuple[Tensor, Tensor] | None = None  # plain queries, positive keys

    def _build_batchformer(self, bf: BatchFormerConfig, feat_dim: int) -> nn.Module | None:
        """BatchFormer (v1) on the features, or BatchFormerV2 between the blocks of a ViT;
        tagged with its optimizer group (read by sslkit.train.optim.param_groups)."""
        if not bf.enabled:
            return None
        if bf.version == "v1":
            module = BatchFormer(feat_dim, bf.heads, bf.ffn_dim, bf.dropout, bf.layers)
        else:
            blocks = getattr(getattr(self.backbone, "encoder", None), "layers", None)
            if not hasattr(self.backbone, "forward_with") or blocks is None:
                raise v2_needs_vit(type(self.backbone).__name__)
            module = BatchFormerV2(feat_dim, len(blocks), bf.insert_after, bf.shared, bf.heads,
                                   bf.ffn_dim, bf.dropout, bf.layers)
        if bf.frozen:  # no gradient, hence no optimizer group (sslkit.train.optim skips it)
            module.requires_grad_(False)
        else:
            module.optim_group = {"name": "batchformer", "lr_scale": bf.lr_scale,
                                  "weight_decay": bf.weight_decay}
        return module

    # ------------------------------------------------------------------ momentum encoder
    def _init_momentum_encoder(self) -> None:
        """Copy the online backbone + projector into the momentum encoder (frozen)."""
        self.momentum_backbone = copy.deepcopy(self.backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for _, p in self.momentum_pairs():
            p.requires_grad_(False)

    def momentum_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(online, momentum) parameter pairs over backbone + projector, in the same order.
        The BatchFormer is never among them (with ``keys: both`` the momentum branch uses
        the online module itself)."""
        online = [*self.backbone.parameters(), *self.projector.parameters()]
        momentum = [*self.momentum_backbone.parameters(), *self.momentum_projector.parameters()]
        return list(zip(online, momentum))

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q over the parameters of backbone+projector.

        Buffers (BN running statistics) are not copied: as in the official code, the key
        encoder keeps its own, updated by its own train-mode forward passes.
        """
        online, target = zip(*self.momentum_pairs())
        torch._foreach_mul_(list(target), m)
        torch._foreach_add_(list(target), [p.detach() for p in online], alpha=1 - m)

    def encode_keys(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> momentum projections (S*B, d), not normalised: S = 1, or with
        ``batchformer.keys: both`` in training S = 2, the momentum features also passed
        through the online BatchFormer (the same parameters, in training mode as the online
        branch, so its dropout is on; no gradient: keys are computed under no_grad), plain
        rows first; with ``head_bn: per_stream`` the momentum projector normalises each key
        stream on its own."""
        if self.keys_both and self.training:
            return self._streamwise(self.momentum_projector, self.momentum_projector,
                                    self._streams(self.momentum_features, x), x.shape[0])
        return self.momentum_projector(self.momentum_features(x))

    def online_features(self, x: Tensor) -> Tensor:
        """The online backbone's features of x (B, D): at once, or as ``self.micro`` runs it
        (the gradient cache of ``train.micro_batch``)."""
        return self.backbone(x) if self.micro is None else self.micro.online(x)

    def momentum_features(self, x: Tensor) -> Tensor:
        """The momentum backbone's features of x (no gradient): at once, or in pieces."""
        return self.momentum_backbone(x) if self.micro is None else self.micro.keys(x)

    def _streamwise(self, head: Callable[[Tensor], Tensor], owner: nn.Module, h: Tensor,
                    b: int) -> Tensor:
        """``head`` on h (S*B, D): on all rows at once, or with ``head_bn: per_stream`` and
        two streams on each stream alone (running statistics of ``owner``'s BatchNorms from
        the plain stream only)."""
        if self.head_bn_per_stream and h.shape[0] != b:
            return per_stream(head, h, b, owner)
        return head(h)

    def _streams(self, features: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """The features of x (``online_features`` or ``momentum_features``) with the
        BatchFormer stream: (2B, D), plain rows first. BatchFormerV2 runs inside the
        backbone's blocks (the method's own backbone of that branch)."""
        if isinstance(self.batchformer, BatchFormerV2):
            backbone = self.backbone if features == self.online_features else self.momentum_backbone
            return self.batchformer(backbone, x, scope=self.bf_scope)
        return self.batchformer(features(x), scope=self.bf_scope)

    # ------------------------------------------------------------------ queries
    def _heads(self, h: Tensor) -> Tensor:
        return self.projector(h)

    def _features(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> online features (S*B, D); the BatchFormer stream (S = 2,
        plain rows first) only in training."""
        if self.batchformer is None or not self.training:
            return self.online_features(x)  # (B, D)
        return self._streams(self.online_features, x)

    def _queries(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> queries (S*B, d); keeps the plain features (detached)."""
        h = self._features(x)
        self.features = h[:x.shape[0]].detach()
        return self._streamwise(self._heads, self, h, x.shape[0])

    def settling_steps(self, global_batch: int) -> int:
        """Steps before the loss is comparable from one step to the next (the loss-spike
        window of :mod:`sslkit.train.spikes` starts after them); none by default."""
        return 0

    def _observe(self, q: Tensor, k: Tensor) -> None:
        """Keep the first direction's plain queries q[:B] and their positive keys k (B, d),
        detached, uncopied, for :mod:`sslkit.train.health` (the loss does not see it)."""
        self.observed = (q[:k.shape[0]].detach(), k.detach())

    # ------------------------------------------------------------------ losses
    def _contrast(self, q: Tensor, b: int, keys: list[Tensor],
                  ctr: Callable[[Tensor, Tensor], Tensor],
                  similarities: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> Stats:
        """One direction's term of the queries q (S*B, d) against the key streams ``keys``,
        reduced by ``batchformer.loss_reduction`` (:func:`sslkit.methods.streams.contrast`)."""
        return contrast(q, b, keys, ctr, similarities, self.loss_reduction)

    @staticmethod
    def _merge(parts: list[Stats]) -> tuple[Tensor, Stats]:
        """(summed loss, detached stats) over the directions
        (:func:`sslkit.methods.streams.merge`)."""
        return merge(parts)
