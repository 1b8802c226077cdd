"""MoCo-v2 (Chen, Fan, Girshick & He 2020, "Improved Baselines with Momentum Contrastive
Learning"; facebookresearch/moco) with optional BatchFormer.

Queries: :class:`~sslkit.methods.base.MoCoBase` (backbone -> [BatchFormer] -> projector).
Keys: the momentum encoder, no gradient, no BatchFormer; shuffle-BN across processes (the
official MoCo logic), or in one process split-BN groups + a shuffled key batch (MoCo's CIFAR-10
demo). Loss: InfoNCE of q against its key (row i pairs with k[i mod B]) and the queue of K past
keys; the B plain keys of every process (both key streams with ``batchformer.keys: both``)
are enqueued after the loss (training only).
Each training step ends with :meth:`momentum_update` (m constant), after the optimizer's and
the LR schedule's steps (:class:`sslkit.train.step.TrainStep`), so the next step's keys come
from the updated encoder; a skipped non-finite step leaves it out.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from sslkit import distributed as dist
from sslkit.config import BatchFormerConfig, Config, MethodConfig
from sslkit.losses import moco_v2_loss, moco_v2_similarities
from sslkit.methods.base import MoCoBase, Stats
from sslkit.methods.registry import register
from sslkit.models.heads import build_mlp
from sslkit.methods.queue_rules import check_bn_splits, check_queue_size, keys_per_step
from sslkit.models.splitbn import convert_split_bn, from_groups


@register("mocov2")
class MoCoV2(MoCoBase):
    """MoCo-v2. ``forward(view1, view2) -> (loss, stats)``.

    Asymmetric (default): loss = ctr(q1, k2). Symmetric (``method.symmetric``, the MoCo
    CIFAR-10 demo): loss = ctr(q1, k2) + ctr(q2, k1) and both key sets are enqueued.
    Stats ``pos_sim`` / ``neg_sim``: mean cosine of q with its key / with the queue rows,
    on the plain stream, averaged over the directions.
    """

    augment_preset, augment_preset_small = "mocov2", "mocov2_small"

    @classmethod
    def paper_defaults(cls, vit: bool, feat_dim: int) -> dict:
        """MoCo-v2's values for the method keys left null (facebookresearch/moco main_moco.py):
        K = 65536, m = 0.999 (constant), T = 0.2, head D-D-128 without BN, its hidden width
        the backbone's feature dim (2048 for a ResNet-50)."""
        return dict(temperature=0.2, queue_size=65536, momentum=0.999,
                    momentum_schedule="constant", proj_dim=128, proj_hidden_dim=feat_dim,
                    proj_layers=2, proj_bn=False, pred_hidden_dim=None)

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """The rules of a config for MoCo-v2 (its method keys resolved): the queue holds whole
        steps of keys; one-process shuffle-BN groups divide the batch."""
        m, bf = cfg.method, cfg.batchformer
        per_step, detail = keys_per_step(cfg.train.batch_size, m.symmetric,
                                          bf.enabled and bf.keys == "both")
        check_queue_size(int(m.queue_size), per_step, "train.batch_size" + detail)
        if m.shuffle_bn and m.bn_splits > 1:
            check_bn_splits(cfg.train.batch_size, m.bn_splits)

    def __init__(self, backbone: nn.Module, feat_dim: int, method: MethodConfig,
                 batchformer: BatchFormerConfig):
        super().__init__(backbone, feat_dim, batchformer)
        self._checked: tuple[int, int] | None = None
        self.temperature = float(method.temperature)
        self.queue_size = int(method.queue_size)
        self.symmetric = bool(method.symmetric)
        # Official MoCo-v2 head: Linear(D, D) - ReLU - Linear(D, 128); BN optional.
        hidden = method.proj_hidden_dim or feat_dim  # null: the feature dim, as the official head
        self.projector = build_mlp(feat_dim, hidden, method.proj_dim, method.proj_layers,
                                   hidden_bn=bool(method.proj_bn))
        # Shuffle-BN only matters for per-process BN statistics: not with SyncBN, not without BN.
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                     for m in [*self.backbone.modules(), *self.projector.modules()])
        self.shuffle_bn = bool(method.shuffle_bn) and not method.sync_bn and has_bn
        # One process: emulate shuffle-BN with per-group statistics (the MoCo CIFAR demo's
        # SplitBatchNorm) and a shuffled key batch; under DDP the keys move between ranks.
        self.bn_splits = (int(method.bn_splits) if self.shuffle_bn and
                          dist.get_world_size() == 1 else 1)
        if self.bn_splits > 1:
            convert_split_bn(self.backbone, self.bn_splits)
            convert_split_bn(self.projector, self.bn_splits)
        self._init_momentum_encoder()
        queue = F.normalize(torch.randn(self.queue_size, method.proj_dim), dim=1)
        self.register_buffer("queue", queue)  # (K, d) unit rows
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _keys(self, x: Tensor) -> list[Tensor]:
        """Images (B, C, H, W) -> unit keys (B, d) from the momentum encoder, one tensor per
        key stream (two with ``batchformer.keys: both``).

        Shuffle-BN (training, several processes): encode a random slice of the gathered
        batch (permutation from rank 0) so that BN statistics do not leak the positive,
        then gather the keys and take back this process's rows.
        """
        world, b = dist.get_world_size(), x.shape[0]
        if self.training and self.bn_splits > 1:  # one process: shuffle over the BN groups
            perm = torch.randperm(b, device=x.device)
            back = torch.argsort(perm)
            streams = [k[back] for k in self.encode_keys(x[perm]).split(b)]
        elif not (self.training and self.shuffle_bn and world > 1):
            streams = list(self.encode_keys(x).split(b))
        else:
            rank = dist.get_rank()
            x_all = dist.all_gather(x)  # (W*B, ...)
            perm = dist.broadcast_(torch.randperm(x_all.shape[0], device=x.device), src=0)
            back = torch.argsort(perm).view(world, -1)[rank]  # this rank's images
            encoded = self.encode_keys(x_all[perm.view(world, -1)[rank]])  # shuffled order
            streams = [dist.all_gather(k)[back] for k in encoded.split(b)]
        return [F.normalize(k.float(), dim=1) for k in streams]

    # ------------------------------------------------------------------ queue
    def settling_steps(self, global_batch: int) -> int:
        """The steps that fill the queue with real keys: the loss rises from ~0 until then."""
        return -(-self.queue_size // keys_per_step(global_batch, self.symmetric,
                                                    self.keys_both)[0])

    def _check_batch(self, batch: int) -> None:
        """The config rules for the batch this process actually sees (once per batch size)."""
        world = dist.get_world_size()
        if self._checked == (batch, world):
            return
        check_bn_splits(batch, self.bn_splits, what="the per-process batch")
        per_step, detail = keys_per_step(batch * world, self.symmetric, self.keys_both)
        check_queue_size(self.queue_size, per_step,
                         f"batch {batch} x {world} process(es)" + detail)
        self._checked = (batch, world)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        """Write the keys of every process (n, d) at queue_ptr; advance it mod K."""
        keys = dist.all_gather(keys)
        n = keys.shape[0]
        rows = (self.queue_ptr + torch.arange(n, device=keys.device)) % self.queue_size
        self.queue.index_copy_(0, rows, keys.to(self.queue.dtype))
        self.queue_ptr.add_(n).remainder_(self.queue_size)

    # ------------------------------------------------------------------ forward
    def _term(self, q: Tensor, keys: list[Tensor], queue: Tensor) -> Stats:
        return self._contrast(q, keys[0].shape[0], keys,
                              lambda rows, k: moco_v2_loss(rows, k, queue, self.temperature),
                              lambda rows, k: moco_v2_similarities(rows, k, queue))

    @property
    def accumulates_plainly(self) -> bool:
        """Without BatchFormer the loss is per sample given the queue: micro-batches need no
        gradient cache (:meth:`accumulate`)."""
        return self.batchformer is None

    def accumulate(self, view1: Tensor, view2: Tensor, pieces: list, backward: Callable
                   ) -> tuple[Tensor, Stats]:
        """The step of :meth:`forward` in micro-batches, plainly accumulated: the keys of the
        whole per-process batch first (the momentum encoder N at a time through
        ``self.micro``; one shuffle), then for each piece of the batch (``pieces``: index
        slices) its queries, its loss against its keys and the same queue, and
        ``backward(loss * n / B)``; the keys of the whole batch are enqueued once at the end.
        Returns the loss and stats of the whole batch (detached)."""
        b = view1.shape[0]
        self._check_batch(b)
        queue = self.queue.clone()
        views = [(view1, self._keys(view2))]
        if self.symmetric:
            views.append((view2, self._keys(view1)))
        total, sums, features, queries = 0.0, {}, [], []
        for piece in pieces:
            parts = []
            for x, keys in views:
                q = self._queries(x[piece])
                parts.append(self._term(q, [k[piece] for k in keys], queue))
                if x is view1:  # what forward keeps of view 1: the probe's features, q1
                    features.append((piece, self.features))
                    queries.append((piece, q.detach()))
            loss, stats = self._merge(parts)
            weight = (view1[piece].shape[0]) / b
            backward(loss * weight)
            total = total + loss.detach() * weight
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v * weight
        self.features = from_groups(features, b)
        self._observe(from_groups(queries, b), views[0][1][0])
        with record_function("sslkit.queue"):
            self._enqueue(torch.cat([k for _, keys in reversed(views) for k in keys]))
        return total, sums

    def forward(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, Stats]:
        """view1, view2 (B, C, H, W) -> (loss, stats); stats are detached 0-dim tensors."""
        if self.training:
            self._check_batch(view1.shape[0])
        queue = self.queue.clone()  # the enqueue below must not touch what autograd saved
        k2 = self._keys(view2)
        q1 = self._queries(view1)
        self._observe(q1, k2[0])
        parts = [self._term(q1, k2, queue)]
        keys = k2
        if self.symmetric:
            k1 = self._keys(view1)
            parts.append(self._term(self._queries(view2), k1, queue))
            keys = k1 + k2
        loss, stats = self._merge(parts)
        if self.training:
            with record_function("sslkit.queue"):  # a phase of sslkit.train.step's breakdown
                self._enqueue(torch.cat(keys))
        return loss, stats
