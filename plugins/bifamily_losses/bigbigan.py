"""The BigBiGAN objective (paper, Section 2): a hinge on each score, summed.

    L_D  = sum_k w_k (mean_real h(s_k) + mean_fake h(-s_k)),    h(t) = max(0, 1 - t)
    L_EG = sum_k w_k (mean_real s_k - mean_fake s_k)

over k in {s_x, s_z, s_xz}. The hinge is applied per term, not to the sum (the paper found the
hinge of the sum much worse). A term with weight 0 is skipped entirely, so its score may be None:
this is how the Table 1 ablations drop the unary terms ("No Unaries" is the original BiGAN
objective in hinge form).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from bifamily.interfaces import Loss, Scores

from .cycle import CycleTerm
from .scores import mean_stats, required_score


class BigbiganLoss(CycleTerm, Loss):
    """Per-term hinge loss weighting the unary image (s_x), unary latent (s_z) and joint terms."""

    name = "bigbigan"

    def __init__(self, *, x_unary: float = 1.0, z_unary: float = 1.0, joint: float = 1.0, cycle: float = 0.0):
        weights = {"s_x": x_unary, "s_z": z_unary, "s_xz": joint}
        if any(weight < 0 for weight in weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {weights}")
        self.weights = {name: weight for name, weight in weights.items() if weight > 0}
        if not self.weights:
            raise ValueError("at least one loss weight must be > 0")
        self.required_scores: tuple[str, ...] = tuple(self.weights)
        self.cycle = cycle

    def _terms(
        self, real: Scores, fake: Scores
    ) -> Iterator[tuple[str, float, torch.Tensor, torch.Tensor]]:
        """(name, weight, real score, fake score) for every term with a positive weight."""
        for name, weight in self.weights.items():
            s_real = required_score(real, name, loss=self.name, side="real")
            s_fake = required_score(fake, name, loss=self.name, side="fake")
            yield name, weight, s_real, s_fake

    def discriminator(
        self, real: Scores, fake: Scores
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = []
        stats: dict[str, torch.Tensor] = {}
        for name, weight, s_real, s_fake in self._terms(real, fake):
            terms.append(weight * (F.relu(1 - s_real).mean() + F.relu(1 + s_fake).mean()))
            stats.update(mean_stats(name, s_real, s_fake))
        loss = sum(terms)
        return loss, {"loss_d": loss.detach(), **stats}

    def generator_encoder(
        self, real: Scores, fake: Scores
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = self._terms(real, fake)
        loss = sum(weight * (s_real.mean() - s_fake.mean()) for _, weight, s_real, s_fake in terms)
        return loss, {"loss_eg": loss.detach()}

    def __repr__(self) -> str:
        cycle = f", cycle={self.cycle}" if self.cycle else ""
        return f"BigbiganLoss(weights={self.weights}{cycle})"
