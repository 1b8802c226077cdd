"""``train.micro_batch: N``: the step of the whole per-process batch of B images, computed N
images at a time, so that a backbone's activations for B images never live at once.

Gradient caching (Gao, Zhang, Han & Callan 2021, "Scaling Deep Contrastive Learning Batch
Size under Memory Limited Setup"; github.com/luyug/GradCache), for any method:

1. the online backbone runs on each micro-batch without recording gradients (the random
   state before each piece is kept, and its BatchNorm running statistics do not move), and
   its features are assembled into one leaf tensor of the whole batch that requires grad;
2. everything that mixes samples runs once on the whole per-process batch, as without
   micro-batches: the BatchFormer and its two streams, the heads and their BatchNorm, the
   contrast with the keys gathered over processes, MoCo-v2's queue loss and enqueue; the
   momentum backbone computes the keys N images at a time (no gradient);
3. the loss's backward stops at the cached features; each micro-batch's backbone then runs
   again with gradients, on the random state of its first run (the same dropout and drop
   path), and receives its rows of the cached feature gradient.

MoCo-v2 without BatchFormer needs no cache (its loss is per sample, given the queue): the
method accumulates plainly (:meth:`sslkit.methods.MoCoV2.accumulate`), one forward and
backward per micro-batch.

What it computes: a ViT (LayerNorm) computes the step of the whole batch. A ResNet's
BatchNorm normalises each micro-batch, which is what local_batch / N processes under DDP
without SyncBN compute (the official MoCo-v2's per-GPU BN); the heads' BatchNorm still sees
the whole per-process batch (as SyncBN on the heads would). The micro-batches are the strided
pieces ``x[m::M]`` (M = B / N), the groups of the one-process split BatchNorm of MoCo-v2's
shuffle-BN: with ``method.bn_splits = M`` the step is the whole-batch step exactly. Under
torchrun the gradients are all-reduced once per step (:func:`all_reduce_grads`), not once per
micro-batch.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from sslkit import distributed as dist_utils
from sslkit.models.splitbn import from_groups, splits_set
from sslkit.train.runtime import autocast


def pieces(batch: int, micro: int) -> list[slice]:
    """The micro-batches of a batch: strided index slices ``m::M``, M = batch / micro."""
    count = batch // micro
    return [slice(m, None, count) for m in range(count)]


def _rng_state(device: torch.device) -> tuple:
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class Pieces:
    """The backbones of a method run micro-batch by micro-batch (``method.micro``): the
    momentum backbone's features N images at a time (no gradient); the online backbone at
    once (plain accumulation feeds it one micro-batch at a time)."""

    def __init__(self, method: nn.Module, micro: int):
        self.method, self.micro = method, micro

    def online(self, x: Tensor) -> Tensor:
        return self.method.backbone(x)

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        backbone = self.method.momentum_backbone
        with splits_set(backbone, 1):  # each micro-batch is one BatchNorm group
            return from_groups([(p, backbone(x[p])) for p in pieces(x.shape[0], self.micro)],
                             x.shape[0])


class GradCache(Pieces):
    """:class:`Pieces` whose online backbone runs as the gradient cache: :meth:`online` is
    pass 1 (cached features as a leaf that requires grad), :meth:`backward` pass 2."""

    def __init__(self, method: nn.Module, micro: int, device: torch.device):
        super().__init__(method, micro)
        self.device = device
        self.calls: list[tuple[Tensor, Tensor, list[slice], list[tuple]]] = []

    def online(self, x: Tensor) -> Tensor:
        backbone, parts, states = self.method.backbone, [], []
        kept = [b.detach().clone() for b in backbone.buffers()]
        with torch.no_grad(), splits_set(backbone, 1):
            for piece in pieces(x.shape[0], self.micro):
                states.append(_rng_state(self.device))
                parts.append((piece, backbone(x[piece])))
            for buf, value in zip(backbone.buffers(), kept):  # statistics move in pass 2
                buf.copy_(value)
        leaf = from_groups(parts, x.shape[0]).requires_grad_(True)
        self.calls.append((x, leaf, [p for p, _ in parts], states))
        return leaf

    def backward(self) -> None:
        """Pass 2: each micro-batch's backbone again with gradients, on the random state of
        its first run, given its rows of the cached features' gradient."""
        after = _rng_state(self.device)
        backbone = self.method.backbone
        with splits_set(backbone, 1):
            for x, leaf, parts, states in self.calls:
                if leaf.grad is None:
                    continue
                for piece, state in zip(parts, states):
                    _set_rng_state(state, self.device)
                    h = backbone(x[piece])
                    h.backward(leaf.grad[piece].to(h.dtype))
        _set_rng_state(after, self.device)
        self.calls.clear()


def micro_step(method: nn.Module, view1: Tensor, view2: Tensor, micro: int,
               backward: Callable[[Tensor], None], device: torch.device, precision: str
               ) -> tuple[Tensor, dict]:
    """The method's loss and stats on (view1, view2), its gradients accumulated in the
    parameters (``backward(loss)`` scales and backpropagates a loss), N = ``micro`` images at
    a time: plain accumulation where the method allows it, else the gradient cache."""
    plain = getattr(method, "accumulates_plainly", False)
    runner = Pieces(method, micro) if plain else GradCache(method, micro, device)
    method.micro = runner
    try:
        with autocast(device, precision):
            if plain:
                with splits_set(method.backbone, 1), splits_set(method.projector, 1):
                    return method.accumulate(view1, view2, pieces(view1.shape[0], micro),
                                             backward)
            loss, stats = method(view1, view2)
        backward(loss)
        with autocast(device, precision):
            runner.backward()
        return loss.detach(), stats
    finally:
        method.micro = None


def all_reduce_grads(params: list[nn.Parameter]) -> None:
    """The mean over processes of every gradient, in one all-reduce (one flat buffer per
    dtype); nothing in one process."""
    world = dist_utils.get_world_size()
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    for dtype in sorted({g.dtype for g in grads}, key=str):
        same = [g for g in grads if g.dtype == dtype]
        flat = _flatten_dense_tensors(same)
        torch.distributed.all_reduce(flat)
        flat.div_(world)
        for g, reduced in zip(same, _unflatten_dense_tensors(flat, same)):
            g.copy_(reduced)
