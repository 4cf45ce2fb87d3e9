"""ResNet-v2 trunk: pre-activation bottleneck ResNet-50/101 with a width multiplier.

Stage ``i`` (0..3) has bottlenecks of inner width ``c * 2**i`` and output width ``4 * c * 2**i``,
where ``c = base_width * width`` also sets the stem; stages 1..3 halve the resolution in their first
block. Widening multiplies every layer, as in Kolesnikov et al. 2019 ("Revisiting self-supervised
visual representation learning"), whose ResNet-50 v2 variants BigBiGAN uses.
"""

from __future__ import annotations

from torch import nn

from .layers import BatchNormFactory, PreActBottleneck, stem

BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def resnet_v2_trunk(
    depth: int,
    channels: int,
    stem_width: int,
    small_input: bool,
    batch_norm: BatchNormFactory,
) -> tuple[nn.Sequential, int]:
    """The trunk up to its final BN-ReLU (before pooling), and its number of output channels."""
    layers: list[nn.Module] = [stem(channels, stem_width, small_input)]
    in_channels = stem_width
    for stage, blocks in enumerate(BLOCKS_PER_STAGE[depth]):
        mid = stem_width << stage
        out = 4 * mid
        for index in range(blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            layers.append(PreActBottleneck(in_channels, mid, out, stride, batch_norm))
            in_channels = out
    layers += [batch_norm(in_channels, affine=True), nn.ReLU()]
    return nn.Sequential(*layers), in_channels
