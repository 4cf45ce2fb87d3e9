"""The BiGAN / ALI objective on the joint logit s(x, z).

D maximises V = E_x log sigmoid(s(x, E(x))) + E_z log(1 - sigmoid(s(G(z), z))). With
log sigmoid(t) = -softplus(-t) and log(1 - sigmoid(t)) = -softplus(t), minimising
L_D = mean softplus(-s_real) + mean softplus(s_fake) is the same thing, and softplus stays finite
and exact (linear) for logits as large as 1e4 where log(sigmoid(.)) would give -inf.
G and E minimise the non-saturating form with the labels swapped:
L_EG = mean softplus(s_real) + mean softplus(-s_fake).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bifamily.interfaces import Loss, Scores

from .cycle import CycleTerm
from .scores import mean_stats, required_score


class BiganLoss(CycleTerm, Loss):
    """Logistic loss on the joint score only; unary scores, if present, are ignored."""

    name = "bigan"
    required_scores: tuple[str, ...] = ("s_xz",)

    def __init__(self, *, cycle: float = 0.0):
        self.cycle = cycle

    def _joint(self, real: Scores, fake: Scores) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            required_score(real, "s_xz", loss=self.name, side="real"),
            required_score(fake, "s_xz", loss=self.name, side="fake"),
        )

    def discriminator(
        self, real: Scores, fake: Scores
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s_real, s_fake = self._joint(real, fake)
        loss = F.softplus(-s_real).mean() + F.softplus(s_fake).mean()
        return loss, {"loss_d": loss.detach(), **mean_stats("s_xz", s_real, s_fake)}

    def generator_encoder(
        self, real: Scores, fake: Scores
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s_real, s_fake = self._joint(real, fake)
        loss = F.softplus(s_real).mean() + F.softplus(-s_fake).mean()
        return loss, {"loss_eg": loss.detach()}

    def __repr__(self) -> str:
        return f"BiganLoss(cycle={self.cycle})" if self.cycle else "BiganLoss()"
