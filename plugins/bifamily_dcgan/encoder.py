"""DCGAN-style encoder backbone: the DCGAN discriminator's conv stack, used as E's body (BiGAN)."""

from __future__ import annotations

from typing import Callable

import attrs
import torch
from torch import nn

from bifamily.config import non_negative, option, positive
from bifamily.context import BuildContext
from bifamily.interfaces import EncoderBackbone

from .stages import BOTTOM, stride2_stages, widths


class DCGANEncoder(EncoderBackbone):
    """[Conv 4x4 s2, BN, LeakyReLU(0.2)]* down to 4x4 -> flatten [-> linear -> LeakyReLU(0.2)].

    The first conv has no batch norm (DCGAN: normalising the input layer made training unstable).
    ``features`` is the flattened 4x4 map; ``forward`` adds the optional projection fed to the
    posterior head.
    """

    def __init__(
        self,
        resolution: int,
        channels: int,
        ch: int,
        max_ch: int,
        features: int,
        batch_norm: Callable[..., nn.Module],
        resolution_key: str,
    ):
        super().__init__()
        self.resolution = resolution
        self.channels = channels
        stages = stride2_stages(resolution, component="encoder", key=resolution_key)
        hidden = widths(ch, max_ch, stages)
        layers: list[nn.Module] = [
            nn.Conv2d(channels, hidden[0], 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        for width_in, width_out in zip(hidden, hidden[1:]):
            layers += [
                nn.Conv2d(width_in, width_out, 4, stride=2, padding=1, bias=False),
                batch_norm(width_out, affine=True),
                nn.LeakyReLU(0.2),
            ]
        self.convs = nn.Sequential(*layers)
        flat_dim = hidden[-1] * BOTTOM * BOTTOM
        self.project = (
            nn.Sequential(nn.Linear(flat_dim, features), nn.LeakyReLU(0.2))
            if features
            else nn.Identity()
        )
        self.feature_dim = features or flat_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(x))


@attrs.frozen
class DCGANEncoderConfig:
    """DCGAN encoder backbone: 4x4 stride-2 convs with batch norm + LeakyReLU(0.2) down to 4x4.

    Reads images at $.data.encoder_resolution (default $.data.resolution), any power of two >= 8.
    """

    ch: int = option(
        64, help="Width of the first conv layer; doubles up to max_ch.", validator=positive
    )
    max_ch: int = option(512, help="Cap on every conv width.", validator=positive)
    features: int = option(
        0,
        help=(
            "0: the posterior head reads the flattened 4x4 map (4 * 4 * last width). > 0: an extra "
            "linear + LeakyReLU projects that map to this width first. Evaluation always uses the "
            "flattened map."
        ),
        validator=non_negative,
    )

    def build(self, ctx: BuildContext) -> DCGANEncoder:
        key = "$.data.encoder_resolution" if ctx.encoder_resolution else "$.data.resolution"
        return DCGANEncoder(
            ctx.encoder_input_resolution,
            ctx.channels,
            self.ch,
            self.max_ch,
            self.features,
            ctx.batch_norm,
            resolution_key=key,
        )
