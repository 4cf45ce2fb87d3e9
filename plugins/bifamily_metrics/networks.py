"""Feature networks for IS/FID/KID: clean-fid's Inception-v3 from a local file, and a random conv net."""

from __future__ import annotations

import attrs

from bifamily.config import option, positive
from bifamily.context import BuildContext
from bifamily.errors import BifamilyError, RecipeError


@attrs.frozen
class InceptionConfig:
    """clean-fid's Inception-v3 (TF 2015-12-05 weights, 2048-d pool features and logits), "clean"
    PIL-bicubic resize to 299x299. Read from a local inception-2015-12-05.pt; nothing is downloaded."""

    weights: str | None = option(
        None, help="Path of inception-2015-12-05.pt (or a folder holding it); unset: $BIFAMILY_INCEPTION_WEIGHTS."
    )

    def build(self, ctx: BuildContext):
        from bifamily.evaluation.feature_networks import load_inception

        try:
            return load_inception(self.weights).to(ctx.device)
        except BifamilyError as exc:
            raise RecipeError([f"$.feature_networks.inception.weights: {exc}"]) from None


@attrs.frozen
class RandomConvConfig:
    """A fixed random conv net (three stride-2 convs, global average pool), deterministic from `seed`:
    FID-style distances for small domains and tests, comparable only between runs with the same settings."""

    seed: int = option(0, help="Seed of the random weights.")
    dim: int = option(64, help="Feature dimension.", validator=positive)

    def build(self, ctx: BuildContext):
        from bifamily.evaluation.feature_networks import RandomConvFeatures

        return RandomConvFeatures(ctx.channels, self.seed, self.dim).to(ctx.device)
