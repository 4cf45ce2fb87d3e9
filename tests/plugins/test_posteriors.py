"""The posterior heads: deterministic, Gaussian and tanh-uniform."""

from __future__ import annotations

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bifamily_posteriors
from bifamily.context import BuildContext
from bifamily.interfaces import PosteriorHead
from bifamily_posteriors import (
    DeterministicPosteriorConfig,
    GaussianPosteriorConfig,
    TanhUniformPosteriorConfig,
)

CTX = BuildContext(resolution=32, channels=3, latent_dim=6)
FEATURES = 10
CONFIGS = [DeterministicPosteriorConfig, GaussianPosteriorConfig, TanhUniformPosteriorConfig]


def features(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, FEATURES, generator=torch.Generator().manual_seed(seed))


def test_registers_three_posteriors() -> None:
    registered: dict[str, type] = {}
    bifamily_posteriors.bifamily_register_posteriors(register=registered.__setitem__)
    assert registered == {
        "deterministic": DeterministicPosteriorConfig,
        "gaussian": GaussianPosteriorConfig,
        "tanh_uniform": TanhUniformPosteriorConfig,
    }


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_every_field_is_documented(config_cls: type) -> None:
    assert all(field.metadata.get("help") for field in attrs.fields(config_cls))


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_head_maps_features_to_latents_of_the_prior_dim(config_cls: type) -> None:
    torch.manual_seed(0)
    head = config_cls().build(CTX, FEATURES)
    assert isinstance(head, PosteriorHead)
    assert head.latent_dim == CTX.latent_dim
    posterior = head(features())
    assert posterior.mean.shape == (4, CTX.latent_dim)
    assert posterior.sample().shape == (4, CTX.latent_dim)
    assert posterior.point.shape == (4, CTX.latent_dim)


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_linear_layer_is_plain_without_spectral_norm(config_cls: type) -> None:
    head = config_cls().build(CTX, FEATURES)
    linears = [module for module in head.modules() if isinstance(module, nn.Linear)]
    assert len(linears) == 1
    assert not any("orig" in name for name, _ in head.named_parameters())
    assert not list(head.buffers())


def test_deterministic_is_dirac_at_w_h() -> None:
    head = DeterministicPosteriorConfig().build(CTX, FEATURES)
    h = features()
    posterior = head(h)
    expected = F.linear(h, head.linear.weight, head.linear.bias)
    assert posterior.scale is None
    torch.testing.assert_close(posterior.mean, expected, rtol=0, atol=0)
    assert torch.equal(posterior.sample(), posterior.mean)
    assert torch.equal(posterior.point, posterior.mean)


def test_gaussian_scale_is_exactly_softplus_of_the_second_half() -> None:
    head = GaussianPosteriorConfig().build(CTX, FEATURES)
    h = features()
    out = F.linear(h, head.linear.weight, head.linear.bias)
    posterior = head(h)
    assert torch.equal(posterior.mean, out[:, : CTX.latent_dim])
    assert torch.equal(posterior.scale, F.softplus(out[:, CTX.latent_dim :]))
    assert (posterior.scale > 0).all()


def test_gaussian_min_scale_is_added_to_sigma() -> None:
    head = GaussianPosteriorConfig(min_scale=0.25).build(CTX, FEATURES)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.fill_(-200.0)  # softplus(-200) ~ 0: only the floor is left
    torch.testing.assert_close(head(features()).scale, torch.full((4, CTX.latent_dim), 0.25))


def test_gaussian_min_scale_must_be_non_negative() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        GaussianPosteriorConfig(min_scale=-0.1)


def test_gaussian_sample_is_mean_plus_eps_sigma() -> None:
    head = GaussianPosteriorConfig().build(CTX, FEATURES)
    posterior = head(features())
    z = posterior.sample(torch.Generator().manual_seed(5))
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(z, posterior.mean + eps * posterior.scale)
    assert torch.equal(posterior.point, posterior.mean)


def test_gaussian_reparameterisation_sends_gradient_to_both_halves_of_w() -> None:
    head = GaussianPosteriorConfig().build(CTX, FEATURES)
    posterior = head(features())
    posterior.sample(torch.Generator().manual_seed(1)).square().sum().backward()
    grad = head.linear.weight.grad
    assert grad is not None
    assert grad[: CTX.latent_dim].abs().sum() > 0  # through mu
    assert grad[CTX.latent_dim :].abs().sum() > 0  # through sigma, i.e. through eps * softplus(s)


def test_gaussian_samples_have_the_posterior_moments() -> None:
    head = GaussianPosteriorConfig().build(CTX, FEATURES)
    with torch.no_grad():
        posterior = head(features(n=1).expand(40_000, FEATURES))
        z = posterior.sample(torch.Generator().manual_seed(2))
    torch.testing.assert_close(z.mean(0), posterior.mean[0], atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), posterior.scale[0], atol=0.03, rtol=0.02)


def test_tanh_uniform_squashes_w_h_into_the_prior_support() -> None:
    head = TanhUniformPosteriorConfig().build(CTX, FEATURES)
    h = 50 * features()  # large pre-activations saturate tanh
    posterior = head(h)
    expected = torch.tanh(F.linear(h, head.linear.weight, head.linear.bias))
    assert posterior.scale is None and posterior.squash
    torch.testing.assert_close(posterior.sample(), expected, rtol=0, atol=0)
    torch.testing.assert_close(posterior.point, expected, rtol=0, atol=0)
    assert posterior.sample().abs().max() <= 1


@pytest.mark.parametrize("config_cls", [DeterministicPosteriorConfig, TanhUniformPosteriorConfig])
def test_gradient_reaches_w(config_cls: type) -> None:
    head = config_cls().build(CTX, FEATURES)
    head(features()).sample().sum().backward()
    assert head.linear.weight.grad is not None
    assert head.linear.weight.grad.abs().sum() > 0
