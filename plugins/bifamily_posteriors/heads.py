"""Posterior heads: one linear map W from backbone features h to the posterior's parameters.

E has no spectral norm (paper, Appendix A), so W is a plain ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bifamily.interfaces import Posterior, PosteriorHead


class DeterministicHead(PosteriorHead):
    """z = W h: a Dirac posterior (Table 1, "Deterministic E")."""

    def __init__(self, feature_dim: int, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.linear = nn.Linear(feature_dim, latent_dim)

    def forward(self, h: torch.Tensor) -> Posterior:
        return Posterior(mean=self.linear(h))


class TanhUniformHead(PosteriorHead):
    """z = tanh(W h), matching the support of the U(-1, 1) prior (BiGAN)."""

    def __init__(self, feature_dim: int, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.linear = nn.Linear(feature_dim, latent_dim)

    def forward(self, h: torch.Tensor) -> Posterior:
        return Posterior(mean=self.linear(h), squash=True)


class GaussianHead(PosteriorHead):
    """mu, s = W h; sigma = softplus(s) + min_scale; z = mu + eps * sigma (BigBiGAN Base, ALI)."""

    def __init__(self, feature_dim: int, latent_dim: int, min_scale: float = 0.0):
        super().__init__()
        self.latent_dim = latent_dim
        self.min_scale = min_scale
        self.linear = nn.Linear(feature_dim, 2 * latent_dim)

    def forward(self, h: torch.Tensor) -> Posterior:
        mean, pre_scale = self.linear(h).chunk(2, dim=1)
        return Posterior(mean=mean, scale=F.softplus(pre_scale) + self.min_scale)

    def extra_repr(self) -> str:
        return f"min_scale={self.min_scale}"
