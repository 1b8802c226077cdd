"""What MoCo-v2 and MoCo-v3 share: a momentum (key) encoder that follows the online one."""
from __future__ import annotations

import copy

import torch
from torch import nn


class MomentumEncoder(nn.Module):
    """Base of the MoCo methods: ``backbone`` + ``projector`` (online) and their momentum
    copies ``momentum_backbone`` + ``momentum_projector`` (no gradient, no BatchFormer, no
    predictor)."""

    backbone: nn.Module
    projector: nn.Module

    def _init_momentum_encoder(self) -> None:
        """Copy the online backbone + projector into the momentum encoder (frozen)."""
        self.momentum_backbone = copy.deepcopy(self.backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in self._momentum_params():
            p.requires_grad_(False)

    def _online_params(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def _momentum_params(self) -> list[nn.Parameter]:
        return [*self.momentum_backbone.parameters(), *self.momentum_projector.parameters()]

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q over the parameters of backbone+projector.

        Buffers (BN running statistics) are not copied: as in the official code, the key
        encoder keeps its own, updated by its own train-mode forward passes.
        """
        target = self._momentum_params()
        torch._foreach_mul_(target, m)
        torch._foreach_add_(target, [p.detach() for p in self._online_params()], alpha=1 - m)
