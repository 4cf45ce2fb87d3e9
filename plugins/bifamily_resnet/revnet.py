"""RevNet trunk in the variant of Kolesnikov et al. 2019 that BigBiGAN uses.

Same layout and widths as the ResNet-v2 trunk with ``c = base_width * width``: the stem widens the
image straight to ``4c`` channels (the couplings cannot change width, so the first convolution
serves as the projection), four stages of additive couplings keep ``4c * 2**i`` channels at their
resolution, and parameter-free downsampling blocks between stages halve the side (2x2 average
pool) and double the width (zero channels) -- not invertible, but they store nothing for backward.
Each coupling's residual is a pre-activation bottleneck on one half (``2c * 2**i`` channels,
inner width a quarter of that). The trunk ends with BN and no ReLU, as in that RevNet; its pooled
output has the ResNet's size (``32c``: 2048 at x1, 8192 at x4).

With ``recompute`` (RevNet proper), training keeps only what cannot be rebuilt: each stage's output
(the downsampling blocks are not invertible) and, for the 7x7 stem, the max-pool's argmax positions
(:mod:`.argmax_stem`); the image itself is held by the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .argmax_stem import ArgmaxStem
from .layers import BatchNormFactory, preactivated_bottleneck, stem
from .resnet_v2 import BLOCKS_PER_STAGE
from .reversible import AdditiveCoupling, ReversibleStage


class PoolAndWiden(nn.Module):
    """Halve the side with a 2x2 average pool (odd sides round up) and double the channels with
    zeros: (pooled) -> (a, b) = (0, pooled).

    The zeros go to the half the next coupling only adds to, so every residual branch reads real
    features. (Kolesnikov et al. pad zeros into both halves; a residual branch fed constant channels
    has a zero-variance batch norm whose output sits exactly on its ReLU's kink, where the stored
    forward and the reconstructed one -- exact up to round-off -- pick different subgradients.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, 2, ceil_mode=True)
        return torch.cat([torch.zeros_like(pooled), pooled], dim=1)


def revnet_trunk(
    depth: int,
    channels: int,
    base_channels: int,
    small_input: bool,
    batch_norm: BatchNormFactory,
    recompute: bool,
) -> tuple[nn.Sequential, int]:
    """The trunk up to its final BN (before pooling), and its number of output channels."""
    width = 4 * base_channels
    root = stem(channels, width, small_input)
    # The small-input stem is one convolution that keeps only the image; nothing to save there.
    layers: list[nn.Module] = [ArgmaxStem(*root) if recompute and not small_input else root]
    for stage, couplings in enumerate(BLOCKS_PER_STAGE[depth]):
        if stage > 0:
            layers.append(PoolAndWiden())
            width *= 2
        half = width // 2
        residuals = (preactivated_bottleneck(half, half // 4, batch_norm) for _ in range(couplings))
        layers.append(ReversibleStage([AdditiveCoupling(r) for r in residuals], recompute))
    layers.append(batch_norm(width, affine=True))
    return nn.Sequential(*layers), width
