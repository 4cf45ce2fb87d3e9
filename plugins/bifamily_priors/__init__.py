"""bifamily built-in plugin: the latent priors P(z), isotropic Gaussian and uniform on [-1, 1]."""

from __future__ import annotations

import attrs

from bifamily.config import option, positive
from bifamily.context import BuildContext
from bifamily.hookspecs import Register, hookimpl

from .priors import GaussianPrior, UniformPrior

_DIM_HELP = "Latent dimension: the size of z every other component is built with."


@attrs.frozen
class GaussianPriorConfig:
    """Isotropic Gaussian N(0, I), the prior of BigBiGAN and ALI."""

    dim: int = option(120, help=_DIM_HELP, validator=positive)

    def build(self, ctx: BuildContext) -> GaussianPrior:
        return GaussianPrior(self.dim)


@attrs.frozen
class UniformPriorConfig:
    """U(-1, 1) in every coordinate, BiGAN's prior (pair it with a tanh-uniform posterior)."""

    dim: int = option(120, help=_DIM_HELP, validator=positive)

    def build(self, ctx: BuildContext) -> UniformPrior:
        return UniformPrior(self.dim)


@hookimpl
def bifamily_register_priors(register: Register) -> None:
    register("gaussian", GaussianPriorConfig)
    register("uniform", UniformPriorConfig)
