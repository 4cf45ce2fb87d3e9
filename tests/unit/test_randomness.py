"""The random streams: every draw depends on (seed, step) alone, so resuming needs no saved RNG state."""

from __future__ import annotations

import torch

from bifamily.randomness import RandomStreams, derive_seed


class Prior:
    dim = 3

    def sample(self, n, generator=None):
        return torch.randn(n, self.dim, generator=generator)


def draws(streams: RandomStreams, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    streams.start_step(step)
    z, noise = streams.draw(4)
    return z, noise, torch.rand(2)  # the last from the private (default) stream


def test_a_step_draws_the_same_whatever_came_before():
    fresh, used = RandomStreams(7, rank=0, prior=Prior()), RandomStreams(7, rank=0, prior=Prior())
    for step in range(3):
        draws(used, step)
    for a, b in zip(draws(fresh, 3), draws(used, 3)):
        assert torch.equal(a, b)


def test_ranks_share_latents_and_noise_but_not_their_private_stream():
    rank0, rank1 = draws(RandomStreams(7, 0, Prior()), 2), draws(RandomStreams(7, 1, Prior()), 2)
    assert torch.equal(rank0[0], rank1[0]) and torch.equal(rank0[1], rank1[1])
    assert not torch.equal(rank0[2], rank1[2])


def test_steps_and_seeds_give_different_streams():
    base = draws(RandomStreams(7, 0, Prior()), 2)[0]
    assert not torch.equal(base, draws(RandomStreams(7, 0, Prior()), 3)[0])
    assert not torch.equal(base, draws(RandomStreams(8, 0, Prior()), 2)[0])
    assert derive_seed(7, "latents", 2) == derive_seed(7, "latents", 2) < 2**63
    assert derive_seed(7, "latents", 2) != derive_seed(7, "latents", 3)
