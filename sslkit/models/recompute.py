"""Activation checkpointing (``model.grad_checkpointing``): a backbone's blocks keep only their
inputs in the forward pass and run again in the backward pass (``torch.utils.checkpoint``,
non-reentrant, with the RNG and autocast state of the first run), so the activations of a
block live only while its gradient is computed.

Which blocks: the encoder blocks of a torchvision ViT (sslkit's ``vit_*``), the four stages of
a ResNet (``layer1`` .. ``layer4``), and for a ``timm/<name>`` model timm's own
``set_grad_checkpointing``. The gradients are those of the plain forward (the recomputation
is the same function on the same input); the cost is one more forward of each block.

BatchNorm in a recomputed block: the second run normalises with the same batch statistics
(same input), but would move the running statistics a second time; it runs with momentum 0
and its batch counter restored, so they move once per step, as without checkpointing.

The module classes are swapped in place (a subclass of each block's own class), so state-dict
names, ``deepcopy`` and loading are unchanged.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sslkit.errors import ConfigError

_CLASSES: dict[type, type] = {}


@contextlib.contextmanager
def bn_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Inside: the BatchNorms of ``module`` do not move their running statistics."""
    bns = [m for m in module.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


class _Recomputed:
    """Mixed in before a block's own class: ``forward`` under ``checkpoint`` when gradients
    are recorded in training; the recomputation keeps BatchNorm statistics still."""

    def forward(self, *args: Any) -> Any:
        parent = super()
        if not (self.training and torch.is_grad_enabled()):
            return parent.forward(*args)
        runs = [0]

        def run(*inputs: Any) -> Any:
            runs[0] += 1
            if runs[0] == 1:
                return parent.forward(*inputs)
            with bn_stats_frozen(self):  # the recomputation in the backward pass
                return parent.forward(*inputs)
        return checkpoint(run, *args, use_reentrant=False)


def _recomputed(module: nn.Module) -> None:
    cls = type(module)
    if issubclass(cls, _Recomputed):
        return
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Recomputed{cls.__name__}", (_Recomputed, cls), {})
    module.__class__ = _CLASSES[cls]


def blocks(backbone: nn.Module) -> list[nn.Module]:
    """The modules activation checkpointing wraps: a torchvision ViT's encoder blocks, a
    ResNet's stages."""
    layers = getattr(getattr(backbone, "encoder", None), "layers", None)
    if layers is not None:
        return list(layers)
    stages = [getattr(backbone, f"layer{i}", None) for i in range(1, 5)]
    return [s for s in stages if s is not None]


def enable_grad_checkpointing(backbone: nn.Module) -> int:
    """Checkpoint ``backbone``'s blocks (in place); returns how many. A timm model uses its
    own ``set_grad_checkpointing``; a model with neither is a one-line ConfigError."""
    found = blocks(backbone)
    if found and not hasattr(backbone, "set_grad_checkpointing"):
        for block in found:
            _recomputed(block)
        return len(found)
    if hasattr(backbone, "set_grad_checkpointing"):
        backbone.set_grad_checkpointing(True)
        return -1
    raise ConfigError(f"model.grad_checkpointing: {type(backbone).__name__} has no blocks "
                      f"sslkit knows how to checkpoint (ViT encoder blocks, ResNet stages, or "
                      f"timm's set_grad_checkpointing); set model.grad_checkpointing=false")


def disable_grad_checkpointing(backbone: nn.Module) -> None:
    """Undo :func:`enable_grad_checkpointing` (e.g. on a momentum copy, which has no
    gradients)."""
    for block in blocks(backbone):
        cls = type(block)
        if issubclass(cls, _Recomputed):
            block.__class__ = cls.__mro__[2]
    if hasattr(backbone, "set_grad_checkpointing"):
        backbone.set_grad_checkpointing(False)
