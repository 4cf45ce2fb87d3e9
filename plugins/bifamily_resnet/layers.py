"""Convolutional pieces shared by ResNet-v2 and RevNet: stems and pre-activation bottlenecks.

Pre-activation ordering (He et al. 2016, "Identity Mappings in Deep Residual Networks"): every
residual branch starts with BN -> ReLU and ends with a bare convolution, so the identity path
carries an un-normalised sum from block to block.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

BatchNormFactory = Callable[..., nn.Module]


def conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 'same' convolution (a batch norm follows, or a residual sum that needs no bias);
    He-normal initialised for the ReLU nets it sits in."""
    layer = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
    )
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    return layer


def stem(in_channels: int, out_channels: int, small_input: bool) -> nn.Sequential:
    """The root block, without batch norm (in a v2 net the first block normalises its input).

    Large inputs: 7x7 stride-2 conv then 3x3 stride-2 max-pool (divides the side by 4).
    Small inputs (CIFAR-style): a single 3x3 stride-1 conv keeps the resolution.
    """
    if small_input:
        return nn.Sequential(conv(in_channels, out_channels, 3))
    return nn.Sequential(
        conv(in_channels, out_channels, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1)
    )


class BottleneckBranch(nn.Sequential):
    """The residual function after the block's input activation: 1x1 -> BN-ReLU -> 3x3 (stride)
    -> BN-ReLU -> 1x1. The stride sits in the 3x3 conv, so no input pixel is skipped."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int,
        batch_norm: BatchNormFactory,
    ):
        super().__init__(
            conv(in_channels, mid_channels, 1),
            batch_norm(mid_channels, affine=True),
            nn.ReLU(),
            conv(mid_channels, mid_channels, 3, stride=stride),
            batch_norm(mid_channels, affine=True),
            nn.ReLU(),
            conv(mid_channels, out_channels, 1),
        )


def preactivated_bottleneck(
    channels: int, mid_channels: int, batch_norm: BatchNormFactory
) -> nn.Sequential:
    """BN -> ReLU -> bottleneck branch, shape-preserving and without a shortcut: the F of a
    reversible coupling."""
    return nn.Sequential(
        batch_norm(channels, affine=True),
        nn.ReLU(),
        BottleneckBranch(channels, mid_channels, channels, 1, batch_norm),
    )


class PreActBottleneck(nn.Module):
    """A ResNet-v2 bottleneck block: x + branch(relu(bn(x))).

    When the shape changes (stride or width), the shortcut is a strided 1x1 conv applied to the
    pre-activated input, as in ResNet-v2, instead of the identity.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int,
        batch_norm: BatchNormFactory,
    ):
        super().__init__()
        self.norm = batch_norm(in_channels, affine=True)
        self.branch = BottleneckBranch(in_channels, mid_channels, out_channels, stride, batch_norm)
        self.projection = (
            conv(in_channels, out_channels, 1, stride=stride)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.norm(x))
        shortcut = x if self.projection is None else self.projection(activated)
        return shortcut + self.branch(activated)
