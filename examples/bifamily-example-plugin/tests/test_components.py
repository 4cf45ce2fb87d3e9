"""The example plugin's components: bifamily's contract checks plus what is particular to each."""

from __future__ import annotations

import math

import pytest
import torch

import bifamily_example
from bifamily.context import BuildContext
from bifamily.errors import RecipeError
from bifamily.testing import check_encoder, check_generator, check_plugin, check_prior, component_config
from bifamily_example import ConvMixerConfig, GaussianMixturePriorConfig, PixelShuffleGeneratorConfig
from bifamily_example.pixel_shuffle import SubPixelUp

CTX = BuildContext(resolution=32, channels=3, latent_dim=16)
GRAY_64 = BuildContext(resolution=64, channels=1, latent_dim=8)
SMALL_MIXER = ConvMixerConfig(width=16, depth=2, kernel_size=3)


def test_plugin_registers_its_three_components() -> None:
    assert check_plugin(bifamily_example) == {
        "generator": {"pixel_shuffle": PixelShuffleGeneratorConfig},
        "encoder": {"convmixer": ConvMixerConfig},
        "prior": {"gaussian_mixture": GaussianMixturePriorConfig},
    }


# --- pixel_shuffle generator ----------------------------------------------------------------------


@pytest.mark.parametrize("ctx", [CTX, GRAY_64], ids=["rgb32", "gray64"])
@pytest.mark.parametrize("icnr", [True, False])
def test_pixel_shuffle_generator_contract(ctx: BuildContext, icnr: bool) -> None:
    check_generator(PixelShuffleGeneratorConfig(ch=4, max_ch=16, icnr=icnr), ctx)


def test_pixel_shuffle_widths_halve_from_the_4x4_map_to_ch() -> None:
    """64 px: 4 up-stages from 4x4; widths ch * 2^k = 64, 32, 16, 8, 4 capped at max_ch = 16."""
    generator = PixelShuffleGeneratorConfig(ch=4, max_ch=16).build(GRAY_64)
    convs = [stage[0] for stage in generator.up]
    assert [(c.in_channels, c.out_channels // 4) for c in convs] == [(16, 16), (16, 16), (16, 8), (8, 4)]
    assert generator.project.out_features == 16 * 4 * 4 and generator.to_image.in_channels == 4


def test_icnr_stage_starts_as_a_nearest_neighbour_upsample() -> None:
    """With ICNR the four sub-pixels of every 2x2 block come from the same filter: all equal."""
    torch.manual_seed(0)
    stage = SubPixelUp(5, 3, lambda width, affine: torch.nn.Identity(), icnr=True)
    out = stage(torch.randn(2, 5, 6, 6))
    nearest = out[..., ::2, ::2].repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    torch.testing.assert_close(out, nearest, rtol=0, atol=1e-6)
    plain = SubPixelUp(5, 3, lambda width, affine: torch.nn.Identity(), icnr=False)(torch.randn(2, 5, 6, 6))
    assert not torch.allclose(plain[..., ::2, ::2], plain[..., 1::2, ::2])


@pytest.mark.parametrize("resolution", [4, 24])
def test_pixel_shuffle_needs_a_power_of_two_resolution(resolution: int) -> None:
    with pytest.raises(RecipeError, match=rf"\$.data.resolution: .* power of two >= 8, got {resolution}"):
        PixelShuffleGeneratorConfig().build(BuildContext(resolution=resolution, channels=3, latent_dim=8))


# --- convmixer encoder ----------------------------------------------------------------------------


@pytest.mark.parametrize("posterior", ["deterministic", "gaussian", "tanh_uniform"])
def test_convmixer_contract_with_every_builtin_posterior(posterior: str) -> None:
    encoder = check_encoder(SMALL_MIXER, component_config("posterior", posterior), CTX, features_dim=16)
    assert encoder.backbone.feature_dim == 16


def test_convmixer_reads_the_encoder_resolution() -> None:
    ctx = BuildContext(resolution=32, channels=3, latent_dim=16, encoder_resolution=64)
    encoder = check_encoder(SMALL_MIXER, component_config("posterior", "gaussian"), ctx)
    assert encoder.resolution == 64


def test_convmixer_patch_size_must_divide_the_resolution() -> None:
    ctx = BuildContext(resolution=32, channels=3, latent_dim=16, encoder_resolution=60)
    with pytest.raises(RecipeError, match=r"\$.encoder.patch_size: 8 does not divide \$.data.encoder_resolution = 60"):
        ConvMixerConfig(patch_size=8).build(ctx)


def test_convmixer_kernel_size_must_be_odd() -> None:
    with pytest.raises(ValueError, match="odd number"):
        ConvMixerConfig(kernel_size=4)


# --- gaussian_mixture prior -----------------------------------------------------------------------


def test_mixture_prior_contract() -> None:
    prior = check_prior(GaussianMixturePriorConfig(dim=8, components=4))
    assert prior.means.shape == (4, 8)
    torch.testing.assert_close(prior.means.norm(dim=1), torch.full((4,), 3.0))


def test_mixture_log_prob_matches_torch_distributions() -> None:
    prior = GaussianMixturePriorConfig(dim=5, components=3, radius=2.0, scale=0.7, seed=3).build(CTX)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(3)),
        torch.distributions.Independent(torch.distributions.Normal(prior.means, 0.7), 1),
    )
    z = prior.sample(50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z), rtol=1e-5, atol=1e-5)


def test_single_component_is_the_gaussian_around_its_centre() -> None:
    prior = GaussianMixturePriorConfig(dim=4, components=1, radius=5.0, scale=2.0).build(CTX)
    z = prior.sample(40000, generator=torch.Generator().manual_seed(0))
    # Sample mean within 5 standard errors (2 / sqrt(40000) = 0.01), std within 2%.
    torch.testing.assert_close(z.mean(dim=0), prior.means[0], rtol=0, atol=0.05)
    torch.testing.assert_close(z.std(dim=0), torch.full((4,), 2.0), rtol=0.02, atol=0)
    at_centre = prior.log_prob(prior.means)
    torch.testing.assert_close(at_centre, torch.tensor([-4 * math.log(2.0 * math.sqrt(2 * math.pi))]))


def test_mixture_components_are_equally_likely() -> None:
    prior = GaussianMixturePriorConfig(dim=16, components=4, radius=20.0).build(CTX)
    z = prior.sample(8000, generator=torch.Generator().manual_seed(1))
    nearest = torch.cdist(z, prior.means).argmin(dim=1)
    counts = torch.bincount(nearest, minlength=4).float()
    # Binomial(8000, 1/4): standard deviation ~39, so 4 standard deviations is ~155.
    assert (counts - 2000).abs().max() < 155


def test_the_centres_depend_only_on_the_seed() -> None:
    a, b, c = (GaussianMixturePriorConfig(dim=6, seed=s).build(CTX).means for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
