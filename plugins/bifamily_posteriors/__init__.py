"""bifamily built-in plugin: posterior heads q(z | x) on top of an encoder backbone."""

from __future__ import annotations

import attrs

from bifamily.config import non_negative, option
from bifamily.context import BuildContext
from bifamily.hookspecs import Register, hookimpl

from .heads import DeterministicHead, GaussianHead, TanhUniformHead


@attrs.frozen
class DeterministicPosteriorConfig:
    """Deterministic encoder z = W h (a Dirac posterior; Table 1, "Deterministic E")."""

    def build(self, ctx: BuildContext, feature_dim: int) -> DeterministicHead:
        return DeterministicHead(feature_dim, ctx.latent_dim)


@attrs.frozen
class GaussianPosteriorConfig:
    """Gaussian posterior: mu, s = W h; sigma = softplus(s) + min_scale (BigBiGAN Base, ALI)."""

    min_scale: float = option(
        0.0,
        help=(
            "Constant added to sigma = softplus(s). A small value (e.g. 1e-4) keeps the posterior "
            "from collapsing to a point when s drifts very negative; 0 is the paper's "
            "parameterisation."
        ),
        validator=non_negative,
    )

    def build(self, ctx: BuildContext, feature_dim: int) -> GaussianHead:
        return GaussianHead(feature_dim, ctx.latent_dim, self.min_scale)


@attrs.frozen
class TanhUniformPosteriorConfig:
    """z = tanh(W h), for the uniform U(-1, 1) prior (BiGAN)."""

    def build(self, ctx: BuildContext, feature_dim: int) -> TanhUniformHead:
        return TanhUniformHead(feature_dim, ctx.latent_dim)


@hookimpl
def bifamily_register_posteriors(register: Register) -> None:
    register("deterministic", DeterministicPosteriorConfig)
    register("gaussian", GaussianPosteriorConfig)
    register("tanh_uniform", TanhUniformPosteriorConfig)
