"""E's body for both families: convolutional trunk -> global average pool -> residual MLP."""

from __future__ import annotations

import torch
from torch import nn

from bifamily.interfaces import EncoderBackbone

from .mlp_head import ResidualMLP


class PooledMLPBackbone(EncoderBackbone):
    """``features(x)`` is the globally average-pooled trunk output (what the paper evaluates: 2048-d
    for a x1 ResNet-50, 8192-d for RevNet x4); ``forward(x)`` runs it through the MLP head, whose
    output (``feature_dim = mlp_width``) feeds the posterior head."""

    def __init__(
        self,
        trunk: nn.Module,
        pooled_dim: int,
        head: ResidualMLP,
        resolution: int,
        channels: int,
    ):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.pooled_dim = pooled_dim
        self.feature_dim = head.width
        self.resolution = resolution
        self.channels = channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
