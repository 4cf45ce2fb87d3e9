"""Reconstructions: exact errors for a perfect autoencoder, the random-pairing baseline, strips, grids."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bifamily.context import BuildContext
from bifamily.evaluation.reconstruction import (
    iterated_reconstructions,
    random_partners,
    reconstruct,
    reconstruction_error,
    side_by_side,
    strip,
)
from bifamily.interfaces import Posterior


class FlattenEncoder(nn.Module):
    """E(x) = x flattened (a deterministic posterior), optionally scaled."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return Posterior(self.scale * x.flatten(1))

    def features(self, x):
        return x.flatten(1)


class UnflattenGenerator(nn.Module):
    def __init__(self, channels: int, size: int):
        super().__init__()
        self.shape = (channels, size, size)

    def forward(self, z):
        return z.view(-1, *self.shape)


CTX = BuildContext(resolution=4, channels=1, latent_dim=16)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_a_perfect_autoencoder_has_zero_error_and_the_exact_random_pairing_baseline():
    x = images(2)
    recon = reconstruct(UnflattenGenerator(1, 4), FlattenEncoder(), x, CTX)
    torch.testing.assert_close(recon, x)
    error = reconstruction_error(x, recon, seed=3)
    assert error.error == 0.0 and error.ratio == 0.0
    # With two images the only derangement swaps them: each reconstruction is compared with the other input.
    assert error.random_pairing_error == pytest.approx(float((x[0] - x[1]).pow(2).mean()), rel=1e-6)


def test_an_input_ignoring_generator_scores_the_same_against_its_input_and_a_random_one():
    x = torch.stack([torch.full((1, 4, 4), v) for v in (-1.0, 0.0, 1.0, 0.5)])
    recon = torch.zeros_like(x)  # the same output whatever the input
    error = reconstruction_error(x, recon, seed=0)
    assert error.error == pytest.approx(error.random_pairing_error)
    assert error.ratio == pytest.approx(1.0)


@pytest.mark.parametrize("n", [2, 3, 10])
def test_random_partners_are_a_seeded_derangement(n):
    partners = random_partners(n, torch.Generator().manual_seed(1))
    assert sorted(partners.tolist()) == list(range(n))
    assert all(partners[i] != i for i in range(n))
    torch.testing.assert_close(partners, random_partners(n, torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError):
        random_partners(1, torch.Generator())


def test_iterated_reconstruction_applies_g_of_e_repeatedly():
    x = images(3)
    iterated = iterated_reconstructions(UnflattenGenerator(1, 4), FlattenEncoder(scale=0.5), x, CTX, iterations=4)
    assert iterated.shape == (5, 3, 1, 4, 4)
    for i in range(5):  # R_i = 0.5^i x for G(E(x)) = x / 2
        torch.testing.assert_close(iterated[i], x * 0.5**i)
    grid, nrow = strip(iterated)
    assert nrow == 5 and grid.shape == (15, 1, 4, 4)
    torch.testing.assert_close(grid[5:10], iterated[:, 1])  # the second row is the second input's strip


def test_inputs_are_resized_to_the_generator_resolution_and_interleaved_with_reconstructions():
    x, recon = images(3), images(3, seed=1)
    big = torch.nn.functional.interpolate(x, size=8, mode="nearest")
    grid, nrow = side_by_side(big, recon)
    assert nrow == 6 and grid.shape == (6, 1, 4, 4)
    torch.testing.assert_close(grid[1::2], recon)
