"""The Gaussian and uniform latent priors."""

from __future__ import annotations

import attrs
import pytest
import torch

import bifamily_priors
from bifamily.context import BuildContext
from bifamily.interfaces import LatentPrior
from bifamily_priors import GaussianPriorConfig, UniformPriorConfig

CTX = BuildContext(resolution=32, channels=3, latent_dim=16)
CONFIGS = [GaussianPriorConfig, UniformPriorConfig]


def test_registers_both_priors() -> None:
    registered: dict[str, type] = {}
    bifamily_priors.bifamily_register_priors(register=registered.__setitem__)
    assert registered == {"gaussian": GaussianPriorConfig, "uniform": UniformPriorConfig}


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_every_field_is_documented_and_dim_defaults_to_biggan_z(config_cls: type) -> None:
    assert all(field.metadata.get("help") for field in attrs.fields(config_cls))
    assert config_cls().dim == 120


@pytest.mark.parametrize("config_cls", CONFIGS)
@pytest.mark.parametrize("dim", [0, -3])
def test_dim_must_be_positive(config_cls: type, dim: int) -> None:
    with pytest.raises(ValueError, match="> 0"):
        config_cls(dim=dim)


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_samples_have_shape_n_by_dim_in_float32(config_cls: type) -> None:
    prior = config_cls(dim=7).build(CTX)
    assert isinstance(prior, LatentPrior)
    assert prior.dim == 7
    z = prior.sample(5)
    assert z.shape == (5, 7)
    assert z.dtype == torch.float32
    assert z.device.type == "cpu"
    assert prior.sample(0).shape == (0, 7)


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_same_seed_gives_same_latents(config_cls: type) -> None:
    prior = config_cls(dim=8).build(CTX)
    first = prior.sample(4, generator=torch.Generator().manual_seed(3))
    second = prior.sample(4, generator=torch.Generator().manual_seed(3))
    other = prior.sample(4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_explicit_device_is_honoured() -> None:
    prior = GaussianPriorConfig(dim=3).build(CTX)
    z = prior.sample(2, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert z.device == torch.device("cpu")


def test_gaussian_moments() -> None:
    z = (
        GaussianPriorConfig(dim=8)
        .build(CTX)
        .sample(50_000, generator=torch.Generator().manual_seed(0))
    )
    # Standard errors: mean 1/sqrt(n) ~ 0.0045, variance sqrt(2/n) ~ 0.0063, per coordinate.
    assert z.mean(0).abs().max() < 0.025
    assert (z.var(0) - 1).abs().max() < 0.035
    correlation = torch.corrcoef(z.T) - torch.eye(8)
    assert correlation.abs().max() < 0.025


def test_uniform_range_and_moments() -> None:
    z = (
        UniformPriorConfig(dim=8)
        .build(CTX)
        .sample(50_000, generator=torch.Generator().manual_seed(0))
    )
    assert z.min() >= -1 and z.max() <= 1
    # U(-1, 1): mean 0, variance 1/3; both ends of the interval are reached.
    assert z.mean(0).abs().max() < 0.015
    assert (z.var(0) - 1 / 3).abs().max() < 0.01
    assert z.min() < -0.999 and z.max() > 0.999
    histogram = torch.histc(z, bins=4, min=-1, max=1) / z.numel()
    torch.testing.assert_close(histogram, torch.full((4,), 0.25), atol=0.01, rtol=0)
