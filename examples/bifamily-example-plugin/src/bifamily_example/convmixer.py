"""A ConvMixer encoder backbone (Trockman & Kolter, "Patches Are All You Need?", 2022).

The image is cut into non-overlapping patches by a strided convolution; every block then mixes
space with a large depthwise convolution (with a residual connection) and channels with a 1x1
convolution, at the patch resolution throughout. It reaches a wide receptive field with few
parameters, a cheap alternative to the ResNet encoders for small images.
"""

from __future__ import annotations

from typing import Callable

import attrs
import torch
from torch import nn

from bifamily.config import check, option, positive
from bifamily.context import BuildContext
from bifamily.errors import RecipeError
from bifamily.interfaces import EncoderBackbone

_odd = check(lambda v: v > 0 and v % 2 == 1, "must be an odd number > 0 (same padding), got {value}")


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _conv_block(conv: nn.Conv2d, width: int, batch_norm: Callable[..., nn.Module]) -> nn.Sequential:
    return nn.Sequential(conv, nn.GELU(), batch_norm(width, affine=True))


class ConvMixer(EncoderBackbone):
    """Patch embedding -> depth x [residual depthwise conv, pointwise conv] -> global average pool.

    The pooled (N, width) map is both the posterior head's input and the evaluation features.
    """

    def __init__(
        self,
        resolution: int,
        channels: int,
        width: int,
        depth: int,
        patch_size: int,
        kernel_size: int,
        batch_norm: Callable[..., nn.Module],
    ):
        super().__init__()
        self.resolution, self.channels, self.feature_dim = resolution, channels, width
        self.embed = _conv_block(nn.Conv2d(channels, width, patch_size, stride=patch_size), width, batch_norm)
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(
                    Residual(
                        _conv_block(
                            nn.Conv2d(width, width, kernel_size, groups=width, padding=kernel_size // 2),
                            width,
                            batch_norm,
                        )
                    ),
                    _conv_block(nn.Conv2d(width, width, 1), width, batch_norm),
                )
                for _ in range(depth)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.embed(x)).mean(dim=(2, 3))


@attrs.frozen
class ConvMixerConfig:
    """ConvMixer encoder backbone: patches -> depthwise/pointwise conv blocks -> pooled features.

    Reads images at $.data.encoder_resolution (default $.data.resolution), which patch_size must divide.
    """

    width: int = option(256, help="Channels of the patch embedding and of every block (the feature width).", validator=positive)
    depth: int = option(8, help="Number of ConvMixer blocks.", validator=positive)
    patch_size: int = option(4, help="Side of the non-overlapping patches (stride of the embedding).", validator=positive)
    kernel_size: int = option(7, help="Side of the depthwise (spatial mixing) kernels.", validator=_odd)

    def build(self, ctx: BuildContext) -> ConvMixer:
        resolution = ctx.encoder_input_resolution
        if resolution % self.patch_size:
            key = "$.data.encoder_resolution" if ctx.encoder_resolution else "$.data.resolution"
            raise RecipeError(
                [f"$.encoder.patch_size: {self.patch_size} does not divide {key} = {resolution}"]
            )
        return ConvMixer(
            resolution, ctx.channels, self.width, self.depth, self.patch_size, self.kernel_size, ctx.batch_norm
        )
