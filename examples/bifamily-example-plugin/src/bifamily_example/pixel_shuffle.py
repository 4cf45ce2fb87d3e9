"""A sub-pixel convolution generator (Shi et al. 2016) with ICNR initialisation (Aitken et al. 2017).

Each up-stage computes 4x the channels at the current resolution and rearranges them into a map of
twice the side (``nn.PixelShuffle``), instead of a transposed convolution. ICNR initialises the four
sub-pixel kernels of every output channel identically, so at initialisation each stage equals a
nearest-neighbour upsample of one convolution and shows none of the checkerboard patterns that
transposed convolutions start with; training is free to make the four kernels differ.
"""

from __future__ import annotations

from typing import Callable

import attrs
import torch
from torch import nn

from bifamily.config import option, positive
from bifamily.context import BuildContext
from bifamily.errors import RecipeError
from bifamily.interfaces import Generator

BOTTOM = 4
SCALE = 2


def icnr_(weight: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Fill a conv weight of shape (C * scale^2, C_in, k, k), read by ``PixelShuffle(scale)``, so that
    the scale^2 sub-pixel filters of each output channel are the same Kaiming-initialised filter."""
    out_channels, *rest = weight.shape
    base = torch.empty(out_channels // scale**2, *rest, dtype=weight.dtype, device=weight.device)
    nn.init.kaiming_normal_(base, nonlinearity="relu")
    with torch.no_grad():
        return weight.copy_(base.repeat_interleave(scale**2, dim=0))


class SubPixelUp(nn.Sequential):
    """Conv 3x3 to 4x the width -> PixelShuffle(2) -> batch norm -> ReLU: doubles the side."""

    def __init__(self, width_in: int, width_out: int, batch_norm: Callable[..., nn.Module], icnr: bool):
        conv = nn.Conv2d(width_in, width_out * SCALE**2, 3, padding=1, bias=False)
        if icnr:
            icnr_(conv.weight)
        super().__init__(conv, nn.PixelShuffle(SCALE), batch_norm(width_out, affine=True), nn.ReLU())


class PixelShuffleGenerator(Generator):
    """z -> linear -> 4x4 map -> [SubPixelUp]* -> conv 3x3 -> tanh, widths halving on the way up."""

    def __init__(
        self,
        latent_dim: int,
        resolution: int,
        channels: int,
        widths: list[int],
        batch_norm: Callable[..., nn.Module],
        icnr: bool,
    ):
        super().__init__()
        self.latent_dim, self.resolution, self.channels = latent_dim, resolution, channels
        self.bottom_width = widths[0]
        self.project = nn.Linear(latent_dim, widths[0] * BOTTOM * BOTTOM, bias=False)
        self.project_norm = batch_norm(widths[0], affine=True)
        self.up = nn.Sequential(
            *(SubPixelUp(w_in, w_out, batch_norm, icnr) for w_in, w_out in zip(widths, widths[1:]))
        )
        self.to_image = nn.Conv2d(widths[-1], channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).unflatten(1, (self.bottom_width, BOTTOM, BOTTOM))
        h = torch.relu(self.project_norm(h))
        return torch.tanh(self.to_image(self.up(h)))


@attrs.frozen
class PixelShuffleGeneratorConfig:
    """Sub-pixel convolution generator (PixelShuffle up-stages with ICNR initialisation) for any
    power-of-two resolution >= 8; widths from min(ch * 2^k, max_ch) at 4x4 down to ch at the
    output, k = log2(resolution / 4)."""

    ch: int = option(64, help="Width at the output resolution; doubles towards the 4x4 map.", validator=positive)
    max_ch: int = option(512, help="Cap on every width.", validator=positive)
    icnr: bool = option(
        True,
        help="ICNR initialisation: each stage starts as a nearest upsample (no checkerboard); false: "
        "plain Kaiming-uniform convolutions.",
    )

    def build(self, ctx: BuildContext) -> PixelShuffleGenerator:
        resolution = ctx.resolution
        if resolution < 2 * BOTTOM or resolution & (resolution - 1):
            raise RecipeError(
                [f"$.data.resolution: the pixel_shuffle generator needs a power of two >= 8, got {resolution}"]
            )
        stages = resolution.bit_length() - BOTTOM.bit_length()
        widths = [min(self.ch << level, self.max_ch) for level in reversed(range(stages + 1))]
        return PixelShuffleGenerator(ctx.latent_dim, resolution, ctx.channels, widths, ctx.batch_norm, self.icnr)
