"""DCGAN-style generator (after Radford et al. 2016): z projected to 4x4, then upsampled to the image."""

from __future__ import annotations

from typing import Callable

import attrs
import torch
from torch import nn

from bifamily.config import option, positive
from bifamily.context import BuildContext
from bifamily.interfaces import Generator

from .stages import BOTTOM, stride2_stages, widths


class DCGANGenerator(Generator):
    """z -> linear -> 4x4 map -> [nearest upsample x2, conv 3x3, BN, ReLU]* -> conv 3x3, tanh.

    Upsample + 3x3 conv rather than DCGAN's 4x4 stride-2 transposed convs: on the quick-start data
    (flat colours, sharp edges) the transposed-conv generator collapsed to one z-independent
    checkerboard texture within 100 steps against the spectrally normalised D, with hinge and
    logistic losses alike, while this form gave diverse samples at the same step (measured; see
    docs/architecture.md). It costs ~2x the multiply-adds per output pixel, which is still small
    next to D.
    """

    def __init__(
        self,
        latent_dim: int,
        resolution: int,
        channels: int,
        ch: int,
        max_ch: int,
        batch_norm: Callable[..., nn.Module],
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.resolution = resolution
        self.channels = channels
        stages = stride2_stages(resolution, component="generator", key="$.data.resolution")
        hidden = widths(ch, max_ch, stages)[::-1]
        self.bottom_width = hidden[0]
        # Bias-free wherever batch norm follows: its shift would cancel the bias anyway.
        self.project = nn.Linear(latent_dim, hidden[0] * BOTTOM * BOTTOM, bias=False)
        self.project_norm = batch_norm(hidden[0], affine=True)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(hidden, [*hidden[1:], hidden[-1]]):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(width_in, width_out, 3, padding=1, bias=False),
                batch_norm(width_out, affine=True),
                nn.ReLU(),
            ]
        self.upsample = nn.Sequential(*layers)
        self.to_image = nn.Conv2d(hidden[-1], channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).unflatten(1, (self.bottom_width, BOTTOM, BOTTOM))
        h = torch.relu(self.project_norm(h))
        return torch.tanh(self.to_image(self.upsample(h)))


@attrs.frozen
class DCGANGeneratorConfig:
    """DCGAN-style generator: a 4x4 map upsampled by nearest-neighbour x2 + 3x3 conv + BN + ReLU.

    Builds any power-of-two resolution >= 8; hidden widths halve on the way up, from
    min(ch * 2^(k-1), max_ch) at 4x4 to ch at the output resolution (k = log2(resolution / 4)).
    """

    ch: int = option(
        64,
        help="Width of the last hidden layers (at half and at the full output resolution).",
        validator=positive,
    )
    max_ch: int = option(512, help="Cap on every hidden width.", validator=positive)

    def build(self, ctx: BuildContext) -> DCGANGenerator:
        return DCGANGenerator(
            ctx.latent_dim, ctx.resolution, ctx.channels, self.ch, self.max_ch, ctx.batch_norm
        )
