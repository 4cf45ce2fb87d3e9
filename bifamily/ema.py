"""Exponential moving averages of G and E weights, used for every evaluation.

Batch-norm statistics are not averaged: the EMA copy takes the live module's buffers (running mean and
variance, spectral-norm vectors) at each update, as BigGAN does. This keeps the statistics consistent
with recent weights; `standing statistics` can be recomputed on top for evaluation if wanted.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, decay: float, warmup: bool, start_step: int) -> float:
    """Decay used at ``step`` (0-based count of G/E updates so far). 0 means "copy the weights"."""
    if step < start_step:
        return 0.0
    if warmup:
        t = step - start_step
        return min(decay, (1.0 + t) / (10.0 + t))
    return decay


class EMA:
    """An averaged, frozen copy of a module."""

    def __init__(self, module: nn.Module):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, live: nn.Module, decay: float) -> None:
        """Move every averaged weight towards the live one and take the live buffers: two multi-tensor
        (``_foreach``) operations over the whole module instead of a kernel per tensor."""
        torch._foreach_lerp_(list(self.module.parameters()), list(live.parameters()), 1.0 - decay)
        buffers = list(self.module.buffers())
        if buffers:
            torch._foreach_copy_(buffers, list(live.buffers()))
