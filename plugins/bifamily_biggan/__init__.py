"""bifamily built-in plugin: BigGAN's generator and BigBiGAN's joint discriminator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import torch

from bifamily.config import InvalidValue, non_negative, option, positive
from bifamily.context import BuildContext
from bifamily.errors import RecipeError
from bifamily.hookspecs import Register, hookimpl

from .discriminator import (
    DISCRIMINATOR_DOWNSAMPLES,
    DISCRIMINATOR_WIDTHS,
    BigBiGANDiscriminator,
    discriminator_block_resolutions,
)
from .generator import GENERATOR_WIDTHS, BigGANGenerator, generator_block_resolutions

_CH_HELP = "Channel width multiplier (BigGAN's ch); the paper's models use 96."
_GENERATOR_STAGES = "the 4x4 input and each up-block's output"
_DISCRIMINATOR_STAGES = "each down-block"


def _toml(values: Sequence[object]) -> str:
    """``values`` as a recipe would write them: [4, 4, 2, 1] or [true, false]."""
    return "[" + ", ".join(str(value).lower() for value in values) + "]"


def _all_positive(_instance: object, attribute: attrs.Attribute, values: tuple[int, ...]) -> None:
    if any(value <= 0 for value in values):
        raise InvalidValue(attribute.name, f"every entry must be > 0, got {_toml(values)}")


def _per_block_help(meaning: str, stages: str, layouts: Mapping[int, Sequence[object]]) -> str:
    defaults = "; ".join(f"{resolution}: {_toml(layout)}" for resolution, layout in layouts.items())
    return (
        f"{meaning}: one entry for {stages}, so the count depends on $.data.resolution. "
        f"Empty: BigGAN's layout at that resolution, {defaults}."
    )


def _check_resolution(resolution: int, supported: dict[int, object], section: str) -> None:
    if resolution not in supported:
        choices = ", ".join(map(str, sorted(supported)))
        raise RecipeError(
            [f"$.data.resolution: {resolution} has no BigGAN layout for $.{section}; use one of {choices}"]
        )


def _per_block_problems(
    key: str, values: Sequence[object], default: Sequence[object], resolution: int, stages: str
) -> list[str]:
    """A per-block list must be empty (BigGAN's layout) or have exactly one entry per stage."""
    if not values or len(values) == len(default):
        return []
    return [
        f"{key}: has {len(values)} entries, but $.data.resolution = {resolution} needs {len(default)}, "
        f"one for {stages} (BigGAN's: {_toml(default)}; [] selects it)"
    ]


def _attention_problems(attention: int, sides: list[int], resolution: int, section: str) -> list[str]:
    if attention == 0 or attention in sides:
        return []
    choices = ", ".join(map(str, sorted(set(sides))))
    return [
        f"$.{section}.attention: {attention} is not a feature-map side of the {section} at "
        f"$.data.resolution = {resolution}; use 0 (no attention) or one of {choices}"
    ]


@attrs.frozen
class BigGANGeneratorConfig:
    """BigGAN generator, unconditional "single label" form: a learned bias replaces the class embedding.

    Residual up-blocks with conditional batch norm on [shared, z chunk], skip-z, self-attention and
    spectral norm throughout. At 128x128 with ch 96 and prior.dim 120 this is BigGAN-128's G.
    """

    ch: int = option(96, help=_CH_HELP, validator=positive)
    multipliers: tuple[int, ...] = option(
        (),
        help=_per_block_help(
            "Widths as multiples of ch (BigGAN's G_arch)", _GENERATOR_STAGES, GENERATOR_WIDTHS
        ),
        validator=_all_positive,
    )
    shared_dim: int = option(
        128,
        help="Width of the learned vector that stands in for BigGAN's shared class embedding.",
        validator=positive,
    )
    attention: int = option(
        64,
        help="Feature-map side after which self-attention is applied (0 = no attention).",
        validator=non_negative,
    )
    hierarchical: bool = option(
        True,
        help=(
            "Hierarchical latents (skip-z): z is split into one chunk for the input layer plus one "
            "per up-block, so prior.dim must divide evenly (e.g. 120 = 6 x 20 at 128x128)."
        ),
    )

    def build(self, ctx: BuildContext) -> BigGANGenerator:
        _check_resolution(ctx.resolution, GENERATOR_WIDTHS, "generator")
        default = GENERATOR_WIDTHS[ctx.resolution]
        sides = generator_block_resolutions(ctx.resolution)
        problems = _per_block_problems(
            "$.generator.multipliers", self.multipliers, default, ctx.resolution, _GENERATOR_STAGES
        )
        problems += _attention_problems(self.attention, sides, ctx.resolution, "generator")
        chunks = len(sides) + 1
        if self.hierarchical and ctx.latent_dim % chunks:
            problems.append(
                f"$.prior.dim: {ctx.latent_dim} does not split into {chunks} equal chunks (one for the "
                f"input layer, one for each of the {len(sides)} blocks at $.data.resolution = "
                f"{ctx.resolution}), as $.generator.hierarchical = true requires; use a multiple of "
                f"{chunks} or set $.generator.hierarchical = false"
            )
        if problems:
            raise RecipeError(problems)
        with torch.device(ctx.device):
            return BigGANGenerator(
                resolution=ctx.resolution,
                channels=ctx.channels,
                latent_dim=ctx.latent_dim,
                widths=[self.ch * multiplier for multiplier in self.multipliers or default],
                shared_dim=self.shared_dim,
                attention=self.attention,
                hierarchical=self.hierarchical,
                batch_norm=ctx.batch_norm,
            )


@attrs.frozen
class BigBiGANDiscriminatorConfig:
    """BigBiGAN's joint discriminator: BigGAN's D body F on x, residual MLPs H on z and J on
    [F(x), H(z)], and a linear head on each for the scores s_x, s_z and s_xz. Spectral norm, no BN.
    """

    ch: int = option(96, help=_CH_HELP, validator=positive)
    multipliers: tuple[int, ...] = option(
        (),
        help=_per_block_help(
            "Output widths as multiples of ch (BigGAN's D_arch)", _DISCRIMINATOR_STAGES, DISCRIMINATOR_WIDTHS
        ),
        validator=_all_positive,
    )
    downsample: tuple[bool, ...] = option(
        (),
        help=_per_block_help(
            "Whether the block halves the side (BigGAN's D_arch downsample)",
            _DISCRIMINATOR_STAGES,
            DISCRIMINATOR_DOWNSAMPLES,
        ),
    )
    attention: int = option(
        64,
        help="Feature-map side after which F applies self-attention (0 = no attention).",
        validator=non_negative,
    )
    mlp_width: int = option(2048, help="Width of the residual MLPs H and J.", validator=positive)
    mlp_blocks: int = option(
        4, help="Residual blocks (of two linear layers each) in H and in J.", validator=positive
    )

    def build(self, ctx: BuildContext) -> BigBiGANDiscriminator:
        _check_resolution(ctx.resolution, DISCRIMINATOR_WIDTHS, "discriminator")
        widths, downsamples = DISCRIMINATOR_WIDTHS[ctx.resolution], DISCRIMINATOR_DOWNSAMPLES[ctx.resolution]
        problems = _per_block_problems(
            "$.discriminator.multipliers", self.multipliers, widths, ctx.resolution, _DISCRIMINATOR_STAGES
        )
        problems += _per_block_problems(
            "$.discriminator.downsample", self.downsample, downsamples, ctx.resolution, _DISCRIMINATOR_STAGES
        )
        downsamples = self.downsample or downsamples
        if not problems:  # the sides, and so the attention check, need a downsample of the right length
            sides = discriminator_block_resolutions(ctx.resolution, downsamples)
            problems = _attention_problems(self.attention, sides, ctx.resolution, "discriminator")
        if problems:
            raise RecipeError(problems)
        with torch.device(ctx.device):
            return BigBiGANDiscriminator(
                resolution=ctx.resolution,
                channels=ctx.channels,
                latent_dim=ctx.latent_dim,
                block_widths=[self.ch * multiplier for multiplier in self.multipliers or widths],
                downsamples=downsamples,
                attention=self.attention,
                mlp_width=self.mlp_width,
                mlp_blocks=self.mlp_blocks,
            )


@hookimpl
def bifamily_register_generators(register: Register) -> None:
    register("biggan", BigGANGeneratorConfig)


@hookimpl
def bifamily_register_discriminators(register: Register) -> None:
    register("bigbigan", BigBiGANDiscriminatorConfig)
