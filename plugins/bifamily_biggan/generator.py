"""BigGAN's generator in the unconditional "single label" form used by BigBiGAN.

A learned vector ``shared`` stands in for the class embedding (one dummy label for every image). With
hierarchical latents ("skip-z") z is cut into equal chunks: the first feeds the input linear layer,
chunk k + 1 is concatenated to ``shared`` to condition the batch norms of block k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bifamily.interfaces import Generator

from .layers import ConditionalBatchNorm, SelfAttention, SNConv2d, SNLinear

BOTTOM_WIDTH = 4

# Default channel multipliers of ``ch``: the 4x4 input, then each up-block's output (BigGAN's G_arch).
GENERATOR_WIDTHS: dict[int, tuple[int, ...]] = {
    32: (4, 4, 4, 4),
    64: (16, 16, 8, 4, 2),
    128: (16, 16, 8, 4, 2, 1),
    256: (16, 16, 8, 8, 4, 2, 1),
}


def generator_block_resolutions(resolution: int) -> list[int]:
    """Output side of each up-block: 8, 16, ..., ``resolution``."""
    num_blocks = len(GENERATOR_WIDTHS[resolution]) - 1
    return [BOTTOM_WIDTH * 2 ** (index + 1) for index in range(num_blocks)]


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class GeneratorBlock(nn.Module):
    """CBN-ReLU-up-conv3x3-CBN-ReLU-conv3x3, plus an upsampled 1x1-conv skip.

    The skip convolves before upsampling: nearest upsampling and a 1x1 convolution commute exactly,
    and convolving the smaller map is four times cheaper.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        condition_dim: int,
        batch_norm: Callable[..., nn.Module],
    ):
        super().__init__()
        self.norm1 = ConditionalBatchNorm(in_channels, condition_dim, batch_norm)
        self.conv1 = SNConv2d(in_channels, out_channels)
        self.norm2 = ConditionalBatchNorm(out_channels, condition_dim, batch_norm)
        self.conv2 = SNConv2d(out_channels, out_channels)
        self.skip = SNConv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_upsample(F.relu(self.norm1(x, condition))))
        h = self.conv2(F.relu(self.norm2(h, condition)))
        return h + _upsample(self.skip(x))


class BigGANGenerator(Generator):
    """z (N, latent_dim) -> images (N, channels, resolution, resolution) in [-1, 1].

    ``widths``: channels of the 4x4 input, then of each up-block's output (one more than up-blocks).
    """

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        latent_dim: int,
        widths: Sequence[int],
        shared_dim: int,
        attention: int,
        hierarchical: bool,
        batch_norm: Callable[..., nn.Module],
    ):
        super().__init__()
        self.resolution = resolution
        self.channels = channels
        self.latent_dim = latent_dim
        self.hierarchical = hierarchical
        num_blocks = len(widths) - 1
        self.chunk_size = latent_dim // (num_blocks + 1) if hierarchical else latent_dim
        condition_dim = shared_dim + (self.chunk_size if hierarchical else 0)

        self.shared = nn.Parameter(torch.empty(1, shared_dim))
        nn.init.orthogonal_(self.shared)  # BigGAN initialises its class embedding orthogonally
        self.input = SNLinear(self.chunk_size, widths[0] * BOTTOM_WIDTH**2)
        self.blocks = nn.ModuleList(
            GeneratorBlock(widths[index], widths[index + 1], condition_dim, batch_norm)
            for index in range(num_blocks)
        )
        block_resolutions = generator_block_resolutions(resolution)
        self.attention_index = block_resolutions.index(attention) if attention else -1
        self.attention = SelfAttention(widths[self.attention_index + 1]) if attention else None
        self.output_norm = batch_norm(widths[-1], affine=True)
        self.output_conv = SNConv2d(widths[-1], channels)

    def conditions(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The input layer's latent and each block's conditioning vector."""
        shared = self.shared.expand(z.shape[0], -1)
        if not self.hierarchical:
            return z, [shared] * len(self.blocks)
        first, *rest = z.split(self.chunk_size, dim=1)
        return first, [torch.cat([shared, chunk], dim=1) for chunk in rest]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        first, conditions = self.conditions(z)
        h = self.input(first).view(z.shape[0], -1, BOTTOM_WIDTH, BOTTOM_WIDTH)
        for index, (block, condition) in enumerate(zip(self.blocks, conditions)):
            h = block(h, condition)
            if index == self.attention_index:
                h = self.attention(h)
        return torch.tanh(self.output_conv(F.relu(self.output_norm(h))))
