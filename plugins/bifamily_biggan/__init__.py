"""bifamily built-in plugin: BigGAN's generator and BigBiGAN's joint discriminator."""

from __future__ import annotations

import attrs
import torch

from bifamily.config import non_negative, option, positive
from bifamily.context import BuildContext
from bifamily.errors import RecipeError
from bifamily.hookspecs import Register, hookimpl

from .discriminator import (
    DISCRIMINATOR_BLOCKS,
    BigBiGANDiscriminator,
    discriminator_block_resolutions,
)
from .generator import GENERATOR_WIDTHS, BigGANGenerator, generator_block_resolutions

_CH_HELP = "Channel width multiplier (BigGAN's ch); the paper's models use 96."


def _check_resolution(resolution: int, supported: dict[int, object], section: str) -> None:
    if resolution not in supported:
        choices = ", ".join(map(str, sorted(supported)))
        raise RecipeError(
            [f"$.data.resolution: {resolution} has no BigGAN layout for $.{section}; use one of {choices}"]
        )


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
        sides = generator_block_resolutions(ctx.resolution)
        problems = _attention_problems(self.attention, sides, ctx.resolution, "generator")
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
                ch=self.ch,
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
        _check_resolution(ctx.resolution, DISCRIMINATOR_BLOCKS, "discriminator")
        sides = discriminator_block_resolutions(ctx.resolution)
        problems = _attention_problems(self.attention, sides, ctx.resolution, "discriminator")
        if problems:
            raise RecipeError(problems)
        with torch.device(ctx.device):
            return BigBiGANDiscriminator(
                resolution=ctx.resolution,
                channels=ctx.channels,
                latent_dim=ctx.latent_dim,
                ch=self.ch,
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
