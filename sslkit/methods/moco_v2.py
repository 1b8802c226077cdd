"""MoCo-v2 (Chen, Fan, Girshick & He 2020) with optional BatchFormer.

Online branch:   x -> backbone -> h (B, D) -> [BatchFormer, training only: (2B, D)]
                   -> projector -> q (S*B, d)            S = 2 streams with BF, else 1
Momentum branch: x -> momentum_backbone -> momentum_projector -> k (B, d), no gradient,
                 no BatchFormer; shuffle-BN across processes (official MoCo logic), or in
                 one process split-BN groups + a shuffled key batch (MoCo CIFAR demo).
Loss: InfoNCE of q against its key (row i pairs with k[i mod B]) and the queue of K past
keys; the B plain keys of every process are enqueued after the loss (training only).
The momentum encoder is updated by :meth:`momentum_update`, which the engine calls right
after ``optimizer.step()``.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslkit import distributed as dist
from sslkit.config import BatchFormerConfig, MethodConfig
from sslkit.errors import ConfigError
from sslkit.losses import moco_v2_loss, moco_v2_similarities
from sslkit.methods.base import MomentumEncoder
from sslkit.models.batchformer import BatchFormer
from sslkit.models.heads import build_mlp
from sslkit.models.splitbn import convert_split_bn


class MoCoV2(MomentumEncoder):
    """MoCo-v2. ``forward(view1, view2) -> (loss, stats)``.

    Asymmetric (default): loss = ctr(q1, k2). Symmetric (``method.symmetric``, the MoCo
    CIFAR-10 demo): loss = ctr(q1, k2) + ctr(q2, k1) and both key sets are enqueued.
    With BatchFormer, ctr is the mean over the 2B query rows, i.e. the average of the plain
    and the BF stream's losses (reported as ``loss_plain`` / ``loss_bf``).
    Stats ``pos_sim`` / ``neg_sim``: mean cosine of q with its key / with the queue rows,
    on the plain stream, averaged over the directions.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, method: MethodConfig,
                 batchformer: BatchFormerConfig):
        super().__init__()
        self.temperature = float(method.temperature)
        self.queue_size = int(method.queue_size)
        self.symmetric = bool(method.symmetric)
        self.bf_scope = batchformer.scope

        self.backbone = backbone  # the exportable encoder: state-dict keys 'backbone.*'
        self.batchformer = (BatchFormer(feat_dim, batchformer.heads, batchformer.ffn_dim,
                                        batchformer.dropout, batchformer.layers)
                            if batchformer.enabled else None)
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

        # Momentum (key) encoder: a copy of backbone + projector, no gradient, no BF.
        self._init_momentum_encoder()

        queue = F.normalize(torch.randn(self.queue_size, method.proj_dim), dim=1)
        self.register_buffer("queue", queue)  # (K, d) unit rows
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    # ------------------------------------------------------------------ branches
    def _queries(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> queries (S*B, d); BF only in training."""
        h = self.backbone(x)  # (B, D)
        if self.batchformer is not None and self.training:
            h = self.batchformer(h, scope=self.bf_scope)  # (2B, D), plain rows first
        return self.projector(h)

    @torch.no_grad()
    def _keys(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> unit keys (B, d) from the momentum encoder.

        Shuffle-BN (training, several processes): encode a random slice of the gathered
        batch (permutation from rank 0) so that BN statistics do not leak the positive,
        then gather the keys and take back this process's rows.
        """
        world = dist.get_world_size()
        encode = lambda t: self.momentum_projector(self.momentum_backbone(t))  # noqa: E731
        if self.training and self.bn_splits > 1:  # one process: shuffle over the BN groups
            perm = torch.randperm(x.shape[0], device=x.device)
            return F.normalize(encode(x[perm])[torch.argsort(perm)].float(), dim=1)
        if not (self.training and self.shuffle_bn and world > 1):
            return F.normalize(encode(x).float(), dim=1)
        rank = dist.get_rank()
        x_all = dist.all_gather(x)  # (W*B, ...)
        perm = dist.broadcast_(torch.randperm(x_all.shape[0], device=x.device), src=0)
        k_all = dist.all_gather(encode(x_all[perm.view(world, -1)[rank]]))  # shuffled order
        k = k_all[torch.argsort(perm).view(world, -1)[rank]]  # back to this rank's images
        return F.normalize(k.float(), dim=1)

    # ------------------------------------------------------------------ queue
    def _check_queue_size(self, batch: int) -> None:
        world = dist.get_world_size()
        if batch % self.bn_splits:
            raise ConfigError(f"the batch of {batch} images is not divisible by "
                              f"method.bn_splits={self.bn_splits} (shuffle-BN groups); change "
                              f"train.batch_size or method.bn_splits")
        per_step = batch * world * (2 if self.symmetric else 1)
        if self.queue_size % per_step:
            ok = max(per_step, self.queue_size // per_step * per_step)
            raise ConfigError(
                f"method.queue_size={self.queue_size} must be a multiple of the keys enqueued "
                f"per step ({per_step} = batch {batch} x {world} process(es)"
                f"{' x 2 (symmetric)' if self.symmetric else ''}); e.g. "
                f"--set method.queue_size={ok}")

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        """Write the keys of every process (n, d) at queue_ptr; advance it mod K."""
        keys = dist.all_gather(keys)
        n = keys.shape[0]
        rows = (self.queue_ptr + torch.arange(n, device=keys.device)) % self.queue_size
        self.queue.index_copy_(0, rows, keys.to(self.queue.dtype))
        self.queue_ptr.add_(n).remainder_(self.queue_size)

    # ------------------------------------------------------------------ forward
    def _contrast(self, q: Tensor, k: Tensor, queue: Tensor) -> dict[str, Tensor]:
        """Loss of queries q (S*B, d) against keys k (B, d); per-stream losses when S = 2."""
        b = k.shape[0]
        pos, neg = moco_v2_similarities(q[:b], k, queue)  # plain stream
        out = {"pos_sim": pos, "neg_sim": neg}
        if q.shape[0] == b:
            out["loss"] = moco_v2_loss(q, k, queue, self.temperature)
        else:  # mean over the 2B rows == average of the two streams' means
            out["loss_plain"] = moco_v2_loss(q[:b], k, queue, self.temperature)
            out["loss_bf"] = moco_v2_loss(q[b:], k, queue, self.temperature)
            out["loss"] = (out["loss_plain"] + out["loss_bf"]) / 2
        return out

    def forward(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """view1, view2 (B, C, H, W) -> (loss, stats); stats are detached 0-dim tensors."""
        if self.training:
            self._check_queue_size(view1.shape[0])
        queue = self.queue.clone()  # the enqueue below must not touch what autograd saved
        k2 = self._keys(view2)
        parts = [self._contrast(self._queries(view1), k2, queue)]
        keys = [k2]
        if self.symmetric:
            k1 = self._keys(view1)
            parts.append(self._contrast(self._queries(view2), k1, queue))
            keys = [k1, k2]
        loss = sum(p["loss"] for p in parts)
        stats = {name: sum(p[name] for p in parts).detach() for name in parts[0]
                 if name != "loss"}
        for name in ("pos_sim", "neg_sim"):  # similarities: mean over directions
            stats[name] = stats[name] / len(parts)
        if self.training:
            self._enqueue(torch.cat(keys))
        return loss, stats
