"""ALICE's explicit cycle term (Li et al. 2017), an option of both built-in losses.

    L_EG += cycle * mean |G(z_hat) - x|,    z_hat a sample of E(x)

The adversarial game only matches the joint distributions of (x, E(x)) and (G(z), z) at its optimum;
the cycle term asks for G(E(x)) = x at every step, which makes the encoder keep what the generator
needs to redraw the image (shape included) from the first steps on. The distance is L1 over pixels,
computed in float32 whatever the autocast precision.
"""

from __future__ import annotations

import torch


class CycleTerm:
    """Mixin for a :class:`~bifamily.interfaces.Loss` with a ``cycle`` weight (0: no term)."""

    cycle: float

    @property
    def reconstructs(self) -> bool:
        return self.cycle > 0

    def reconstruction(self, x: torch.Tensor, x_rec: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        distance = (x_rec.float() - x.float()).abs().mean()
        return self.cycle * distance, {"cycle_l1": distance.detach()}
