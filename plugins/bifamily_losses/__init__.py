"""bifamily built-in plugin: the adversarial objectives (BiGAN/ALI logistic, BigBiGAN hinge).

Each built loss exposes ``required_scores``, the :class:`~bifamily.interfaces.Scores` fields it
reads; the discriminator must provide them (a missing one raises ``ValueError`` naming score and
loss).
"""

from __future__ import annotations

import math
import attrs

from bifamily.config import check, option
from bifamily.context import BuildContext
from bifamily.errors import RecipeError
from bifamily.hookspecs import Register, hookimpl

from .bigan import BiganLoss
from .bigbigan import BigbiganLoss


_weight = check(lambda v: math.isfinite(v) and v >= 0, "must be a finite number >= 0, got {value}")


def _cycle_option():
    return option(
        0.0,
        help=(
            "Weight of ALICE's explicit cycle term, mean |G(E(x)) - x| (L1 over pixels, E(x) a posterior "
            "sample) added to L_EG; 0 drops it. Costs one more generator pass per G+E update."
        ),
        validator=_weight,
    )


@attrs.frozen
class BiganLossConfig:
    """BiGAN / ALI: logistic loss on the joint score s_xz, non-saturating for G and E."""

    cycle: float = _cycle_option()

    def build(self, ctx: BuildContext) -> BiganLoss:
        return BiganLoss(cycle=self.cycle)


@attrs.frozen
class BigbiganLossConfig:
    """BigBiGAN: hinge on each of s_x, s_z, s_xz, summed with these weights (0 drops the term).

    Table 1 ablations: "No Unaries" sets x_unary = z_unary = 0, "x Unary Only" sets z_unary = 0,
    "z Unary Only" sets x_unary = 0.
    """

    x_unary: float = option(
        1.0, help="Weight of the unary image term s_x (0 drops it).", validator=_weight
    )
    z_unary: float = option(
        1.0, help="Weight of the unary latent term s_z (0 drops it).", validator=_weight
    )
    joint: float = option(
        1.0, help="Weight of the joint term s_xz (0 drops it).", validator=_weight
    )
    cycle: float = _cycle_option()

    def build(self, ctx: BuildContext) -> BigbiganLoss:
        if self.x_unary == 0 and self.z_unary == 0 and self.joint == 0:
            raise RecipeError(
                ["$.loss.x_unary, $.loss.z_unary, $.loss.joint: at least one weight must be > 0"]
            )
        return BigbiganLoss(x_unary=self.x_unary, z_unary=self.z_unary, joint=self.joint, cycle=self.cycle)


@hookimpl
def bifamily_register_losses(register: Register) -> None:
    register("bigan", BiganLossConfig)
    register("bigbigan", BigbiganLossConfig)
