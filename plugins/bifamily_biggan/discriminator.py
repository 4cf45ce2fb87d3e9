"""BigBiGAN's joint discriminator: F (BigGAN's D body on x), H (residual MLP on z), J (residual MLP on
[F(x), H(z)]) and one linear head on each, giving the unary scores s_x, s_z and the joint score s_xz.

Everything is spectrally normalised; there is no batch norm, so real and fake pairs may share a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bifamily.interfaces import JointDiscriminator, Scores

from .layers import SelfAttention, SNConv2d, SNLinear

# Per down-block, BigGAN's D_arch: the default output width as a multiple of ``ch``, and whether the
# block halves the side.
DISCRIMINATOR_WIDTHS: dict[int, tuple[int, ...]] = {
    32: (4, 4, 4, 4),
    64: (1, 2, 4, 8, 16),
    128: (1, 2, 4, 8, 16, 16),
    256: (1, 2, 4, 8, 8, 16, 16),
}
DISCRIMINATOR_DOWNSAMPLES: dict[int, tuple[bool, ...]] = {
    32: (True, True, False, False),
    64: (True, True, True, True, False),
    128: (True, True, True, True, True, False),
    256: (True, True, True, True, True, True, False),
}


def discriminator_block_resolutions(resolution: int, downsamples: Sequence[bool]) -> list[int]:
    """Output side of each down-block (repeats where a block keeps the side)."""
    sides, side = [], resolution
    for downsample in downsamples:
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
    """F: BigGAN's discriminator without its output layer; ReLU then global sum pooling.

    ``block_widths`` and ``downsamples``: each down-block's output channels and whether it halves the side.
    """

    def __init__(
        self,
        resolution: int,
        channels: int,
        block_widths: Sequence[int],
        downsamples: Sequence[bool],
        attention: int,
    ):
        super().__init__()
        widths = [channels, *block_widths]
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(widths[index], widths[index + 1], downsample, preactivation=index > 0)
            for index, downsample in enumerate(downsamples)
        )
        sides = discriminator_block_resolutions(resolution, downsamples)
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
        block_widths: Sequence[int],
        downsamples: Sequence[bool],
        attention: int,
        mlp_width: int,
        mlp_blocks: int,
    ):
        super().__init__()
        self.resolution = resolution
        self.channels = channels
        self.latent_dim = latent_dim
        self.image_path = ImagePath(resolution, channels, block_widths, downsamples, attention)
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
