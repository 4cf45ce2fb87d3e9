"""BigBiGAN's joint discriminator: F (BigGAN's D body on x), H (residual MLP on z), J (residual MLP on
[F(x), H(z)]) and one linear head on each, giving the unary scores s_x, s_z and the joint score s_xz.

Everything is spectrally normalised; there is no batch norm, so real and fake pairs may share a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bifamily.interfaces import JointDiscriminator, Scores

from .layers import SelfAttention, SNConv2d, SNLinear

# Per down-block: (channel multiplier of ``ch``, halves the side?) -- BigGAN's D_arch.
DISCRIMINATOR_BLOCKS: dict[int, tuple[tuple[int, bool], ...]] = {
    32: ((4, True), (4, True), (4, False), (4, False)),
    64: ((1, True), (2, True), (4, True), (8, True), (16, False)),
    128: ((1, True), (2, True), (4, True), (8, True), (16, True), (16, False)),
    256: ((1, True), (2, True), (4, True), (8, True), (8, True), (16, True), (16, False)),
}


def discriminator_block_resolutions(resolution: int) -> list[int]:
    """Output side of each down-block (repeats where a block keeps the side)."""
    sides, side = [], resolution
    for _, downsample in DISCRIMINATOR_BLOCKS[resolution]:
        side = side // 2 if downsample else side
        sides.append(side)
    return sides


class DiscriminatorBlock(nn.Module):
    """[ReLU]-conv3x3-ReLU-conv3x3-[avgpool], plus a [pooled] 1x1-conv skip when the shape changes.

    The first block omits the pre-activation (its input is the image). The skip always pools before
    its 1x1 convolution: average pooling and a 1x1 convolution commute exactly, and the smaller map is
    cheaper to convolve.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, preactivation: bool):
        super().__init__()
        self.downsample = downsample
        self.preactivation = preactivation
        self.conv1 = SNConv2d(in_channels, out_channels)
        self.conv2 = SNConv2d(out_channels, out_channels)
        learnable_skip = downsample or in_channels != out_channels
        self.skip = SNConv2d(in_channels, out_channels, kernel_size=1) if learnable_skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        shortcut = x
        if self.downsample:
            h = F.avg_pool2d(h, 2)
            shortcut = F.avg_pool2d(shortcut, 2)
        if self.skip is not None:
            shortcut = self.skip(shortcut)
        return h + shortcut


class ImagePath(nn.Module):
    """F: BigGAN's discriminator without its output layer; ReLU then global sum pooling."""

    def __init__(self, resolution: int, channels: int, ch: int, attention: int):
        super().__init__()
        blocks = DISCRIMINATOR_BLOCKS[resolution]
        widths = [channels] + [multiplier * ch for multiplier, _ in blocks]
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(widths[index], widths[index + 1], downsample, preactivation=index > 0)
            for index, (_, downsample) in enumerate(blocks)
        )
        sides = discriminator_block_resolutions(resolution)
        self.attention_index = sides.index(attention) if attention else -1
        self.attention = SelfAttention(widths[self.attention_index + 1]) if attention else None
        self.feature_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for index, block in enumerate(self.blocks):
            h = block(h)
            if index == self.attention_index:
                h = self.attention(h)
        return F.relu(h).sum(dim=(2, 3))


class ResidualMLPBlock(nn.Module):
    """[ReLU]-linear-ReLU-linear plus a skip (a linear map when the width changes)."""

    def __init__(self, in_features: int, out_features: int, preactivation: bool):
        super().__init__()
        self.preactivation = preactivation
        self.linear1 = SNLinear(in_features, out_features)
        self.linear2 = SNLinear(out_features, out_features)
        self.skip = SNLinear(in_features, out_features) if in_features != out_features else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.linear2(F.relu(self.linear1(h)))
        return h + (x if self.skip is None else self.skip(x))


class ResidualMLP(nn.Module):
    """H and J: ``num_blocks`` residual blocks of two layers each, ending in a ReLU like F does.

    The first block has no pre-activation (its input is z, or the already rectified [F(x), H(z)]).
    """

    def __init__(self, in_features: int, width: int, num_blocks: int):
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                ResidualMLPBlock(in_features if index == 0 else width, width, preactivation=index > 0)
                for index in range(num_blocks)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.blocks(x))


class BigBiGANDiscriminator(JointDiscriminator):
    """D(x, z) -> Scores(s_x = theta_x F(x), s_z = theta_z H(z), s_xz = theta_xz J(F(x), H(z))).

    Scores are returned in float32 even under autocast, so the loss is computed at full precision.
    """

    has_batch_statistics = False

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        latent_dim: int,
        ch: int,
        attention: int,
        mlp_width: int,
        mlp_blocks: int,
    ):
        super().__init__()
        self.resolution = resolution
        self.channels = channels
        self.latent_dim = latent_dim
        self.image_path = ImagePath(resolution, channels, ch, attention)
        self.latent_path = ResidualMLP(latent_dim, mlp_width, mlp_blocks)
        self.joint_path = ResidualMLP(self.image_path.feature_dim + mlp_width, mlp_width, mlp_blocks)
        self.image_head = SNLinear(self.image_path.feature_dim, 1)
        self.latent_head = SNLinear(mlp_width, 1)
        self.joint_head = SNLinear(mlp_width, 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> Scores:
        image_features = self.image_path(x)
        latent_features = self.latent_path(z)
        joint_features = self.joint_path(torch.cat([image_features, latent_features], dim=1))
        return Scores(
            s_x=self.image_head(image_features).squeeze(1).float(),
            s_z=self.latent_head(latent_features).squeeze(1).float(),
            s_xz=self.joint_head(joint_features).squeeze(1).float(),
        )
