"""The prior distributions themselves."""

from __future__ import annotations

import abc

import torch

from bifamily.interfaces import LatentPrior


class _FactorisedPrior(LatentPrior):
    """A prior with independent coordinates, drawn where the random generator lives.

    With an explicit ``generator`` the draw happens on the generator's device and is then moved to
    ``device``, so the same seeded generator gives the same latents whatever the target device.
    """

    def __init__(self, dim: int):
        self.dim = dim

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        draw_device = generator.device if generator is not None else torch.device(device)
        return self._draw((n, self.dim), generator, draw_device).to(device)

    @abc.abstractmethod
    def _draw(
        self, shape: tuple[int, int], generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        """Draw a float32 tensor of ``shape`` on ``device``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class GaussianPrior(_FactorisedPrior):
    """N(0, I)."""

    def _draw(
        self, shape: tuple[int, int], generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)


class UniformPrior(_FactorisedPrior):
    """U(-1, 1) in every coordinate (the half-open [-1, 1), which has the same distribution)."""

    def _draw(
        self, shape: tuple[int, int], generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        unit = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
        return unit * 2 - 1
