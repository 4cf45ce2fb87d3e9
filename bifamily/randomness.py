"""The random streams of a training run, re-seeded from (run seed, step) at the start of every step.

- Global stream (shared): the latents z ~ P(z) and the posterior noise eps of every update are drawn
  for the whole global batch, identically on every rank, from a CPU generator; each rank then keeps its
  rows (:meth:`bifamily.data.BatchLayout.local`). A run on 2 ranks therefore draws exactly the latents
  of a run on 1 rank, and drawing on the CPU makes them independent of the device too.
- Private stream (per rank): torch's default generators, seeded from (seed, step, rank). Whatever a
  component draws itself (D's dropout masks) comes from here, so ranks are decorrelated; such draws
  differ between world sizes, which is why exact world-size equivalence needs a dropout-free D.

Because both depend on the step alone, nothing about them has to be saved: a run resumed at step s on
any number of ranks continues with the draws an uninterrupted run would have made.
"""

from __future__ import annotations

import hashlib

import torch

from bifamily.interfaces import LatentPrior


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of labels, well mixed (nearby runs and steps share no streams)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class RandomStreams:
    """The global latent stream and this rank's private stream."""

    def __init__(self, seed: int, rank: int, prior: LatentPrior):
        self.seed = seed
        self.rank = rank
        self.prior = prior
        self.shared = torch.Generator()

    def start_step(self, step: int) -> None:
        self.shared.manual_seed(derive_seed(self.seed, "latents", step))
        torch.manual_seed(derive_seed(self.seed, "rank", self.rank, step))

    def draw(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents and standard-normal posterior noise for one global batch, both (batch_size, dim)."""
        z = self.prior.sample(batch_size, generator=self.shared)
        noise = torch.randn((batch_size, self.prior.dim), generator=self.shared)
        return z, noise
