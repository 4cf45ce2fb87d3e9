"""A mixture-of-Gaussians latent prior: K isotropic Gaussians with centres on a sphere.

A multi-modal P(z) gives the generator a discrete "which mode" choice on top of the continuous
code, a common way to encourage clustered representations in BiGAN-style models. The centres are
drawn once from the config's ``seed`` (directions uniform on the sphere of radius ``radius``), so a
recipe always means the same prior.
"""

from __future__ import annotations

import math

import attrs
import torch

from bifamily.config import option, positive
from bifamily.context import BuildContext
from bifamily.interfaces import LatentPrior


class GaussianMixturePrior(LatentPrior):
    """p(z) = (1/K) sum_k N(z; mu_k, scale^2 I)."""

    def __init__(self, means: torch.Tensor, scale: float):
        self.means = means
        self.dim = means.shape[1]
        self.scale = scale

    def sample(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Pick a centre uniformly, then add N(0, scale^2 I) noise. Drawn on the generator's device
        when one is given, so a seeded generator gives the same latents whatever ``device`` is."""
        draw_device = generator.device if generator is not None else torch.device(device)
        means = self.means.to(draw_device)
        component = torch.randint(len(means), (n,), generator=generator, device=draw_device)
        noise = torch.randn((n, self.dim), generator=generator, device=draw_device)
        return (means[component] + self.scale * noise).to(device)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for each row of z: (N, dim) -> (N,)."""
        means = self.means.to(z.device, z.dtype)
        squared = torch.cdist(z, means).square()  # (N, K)
        log_normal = -squared / (2 * self.scale**2) - self.dim * math.log(self.scale * math.sqrt(2 * math.pi))
        return torch.logsumexp(log_normal, dim=1) - math.log(len(means))

    def __repr__(self) -> str:
        return f"GaussianMixturePrior(dim={self.dim}, components={len(self.means)}, scale={self.scale})"


def sphere_points(count: int, dim: int, radius: float, seed: int) -> torch.Tensor:
    """``count`` points with uniformly random directions at distance ``radius`` from the origin."""
    directions = torch.randn((count, dim), generator=torch.Generator().manual_seed(seed))
    return radius * directions / directions.norm(dim=1, keepdim=True)


@attrs.frozen
class GaussianMixturePriorConfig:
    """Mixture of `components` isotropic Gaussians N(mu_k, scale^2 I) with equal weights, the centres
    mu_k at distance `radius` from the origin in directions drawn from `seed`."""

    dim: int = option(120, help="Latent dimension: the size of z every other component is built with.", validator=positive)
    components: int = option(10, help="Number of mixture components K.", validator=positive)
    radius: float = option(3.0, help="Distance of every centre from the origin.", validator=positive)
    scale: float = option(1.0, help="Standard deviation of each component in every coordinate.", validator=positive)
    seed: int = option(0, help="Seed of the centres' directions (not of the training run).")

    def build(self, ctx: BuildContext) -> GaussianMixturePrior:
        return GaussianMixturePrior(sphere_points(self.components, self.dim, self.radius, self.seed), self.scale)
