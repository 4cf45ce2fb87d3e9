"""Recipe configs of the two encoder backbones, ``kind = "resnet_v2"`` and ``kind = "revnet"``."""

from __future__ import annotations

from typing import Any

import attrs

from bifamily.config import check, one_of, option, positive
from bifamily.context import BuildContext
from bifamily.errors import RecipeError

from .backbone import PooledMLPBackbone
from .mlp_head import ResidualMLP
from .resnet_v2 import BLOCKS_PER_STAGE, resnet_v2_trunk
from .revnet import revnet_trunk

MIN_RESOLUTION = 16
SMALL_INPUT_MAX = 64


_even_at_least_two = check(
    lambda v: v >= 2 and v % 2 == 0,
    "must be an even number >= 2 (residual blocks of 2 layers), got {value}",
)
_even = check(
    lambda v: v > 0 and v % 2 == 0,
    "must be an even number > 0 (RevNet's first bottlenecks are base_width * width / 2 wide), "
    "got {value}",
)


def _input_resolution(ctx: BuildContext, kind: str) -> int:
    resolution = ctx.encoder_input_resolution
    if resolution < MIN_RESOLUTION:
        key = "$.data.encoder_resolution" if ctx.encoder_resolution else "$.data.resolution"
        raise RecipeError(
            [f"{key}: the {kind} encoder needs images of at least {MIN_RESOLUTION} px, got {resolution}"]
        )
    return resolution


def _depth_field() -> Any:
    return option(
        50,
        help="Network depth: 50 (3-4-6-3 blocks per stage) or 101 (3-4-23-3).",
        validator=one_of(*BLOCKS_PER_STAGE),
    )


def _width_field() -> Any:
    return option(
        1,
        help=(
            "Width multiplier applied to every layer: 1, 2 or 4 (BigBiGAN's x2 / x4 rows, from "
            "Kolesnikov et al. 2019). The pooled features have 2048 * width channels at "
            "base_width 64."
        ),
        validator=one_of(1, 2, 4),
    )


def _mlp_width_field() -> Any:
    return option(
        4096,
        help="Width of the residual MLP after the pooled features; the posterior head reads this.",
        validator=positive,
    )


def _mlp_layers_field() -> Any:
    return option(
        4,
        help="Linear layers in the residual MLP, in residual blocks of 2 (even, >= 2).",
        validator=_even_at_least_two,
    )


def _small_input_field() -> Any:
    return option(
        None,
        help=(
            "Stem choice. true: one 3x3 stride-1 conv (no max-pool); false: 7x7 stride-2 conv + "
            f"3x3 stride-2 max-pool. Unset: true for inputs <= {SMALL_INPUT_MAX} px."
        ),
    )


def _small_input(small_input: bool | None, resolution: int) -> bool:
    return resolution <= SMALL_INPUT_MAX if small_input is None else small_input


@attrs.frozen
class ResNetV2Config:
    """Pre-activation bottleneck ResNet (He et al. 2016, v2) -> global average pool -> residual MLP.

    E of BigBiGAN (ResNet-v2-50, x2/x4 widths, ResNet-101). Reads images at $.data.encoder_resolution
    (default $.data.resolution), at least 16 px. Evaluation features are the pooled trunk output.
    """

    depth: int = _depth_field()
    width: int = _width_field()
    base_width: int = option(
        64,
        help="Stem width before the width multiplier (64 in the paper; smaller for CPU-sized runs).",
        validator=positive,
    )
    mlp_width: int = _mlp_width_field()
    mlp_layers: int = _mlp_layers_field()
    small_input: bool | None = _small_input_field()

    def build(self, ctx: BuildContext) -> PooledMLPBackbone:
        resolution = _input_resolution(ctx, "resnet_v2")
        trunk, pooled_dim = resnet_v2_trunk(
            self.depth,
            ctx.channels,
            self.base_width * self.width,
            _small_input(self.small_input, resolution),
            ctx.batch_norm,
        )
        head = ResidualMLP(pooled_dim, self.mlp_width, self.mlp_layers, ctx.batch_norm)
        return PooledMLPBackbone(trunk, pooled_dim, head, resolution, ctx.channels)


@attrs.frozen
class RevNetConfig:
    """RevNet (Gomez et al. 2017) as in Kolesnikov et al. 2019 -> global average pool -> residual MLP.

    Reversible couplings with ResNet-v2-50's layer count and widths; training recomputes activations
    in backward instead of storing them. Reads images at $.data.encoder_resolution (default
    $.data.resolution), at least 16 px.
    """

    depth: int = _depth_field()
    width: int = _width_field()
    base_width: int = option(
        64,
        help=(
            "Width unit before the multiplier (64 in the paper; smaller for CPU-sized runs): the stem "
            "outputs 4 * base_width * width channels. Must be even."
        ),
        validator=_even,
    )
    mlp_width: int = _mlp_width_field()
    mlp_layers: int = _mlp_layers_field()
    small_input: bool | None = _small_input_field()
    reversible_backward: bool = option(
        True,
        help=(
            "true: the memory-saving backward of RevNet: each reversible stage recomputes its "
            "activations from its output (about one extra forward pass of compute), and the 7x7 "
            "stem keeps only its max-pool's argmax positions. false: the same network with "
            "ordinary stored-activation autograd."
        ),
    )

    def build(self, ctx: BuildContext) -> PooledMLPBackbone:
        resolution = _input_resolution(ctx, "revnet")
        trunk, pooled_dim = revnet_trunk(
            self.depth,
            ctx.channels,
            self.base_width * self.width,
            _small_input(self.small_input, resolution),
            ctx.batch_norm,
            self.reversible_backward,
        )
        head = ResidualMLP(pooled_dim, self.mlp_width, self.mlp_layers, ctx.batch_norm)
        return PooledMLPBackbone(trunk, pooled_dim, head, resolution, ctx.channels)
