"""The DCGAN-scale generator, encoder backbone and joint discriminator."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import bifamily_dcgan
from bifamily.config import structure
from bifamily.context import BuildContext
from bifamily.errors import RecipeError
from bifamily.interfaces import EncoderBackbone, Generator, JointDiscriminator, Scores
from bifamily.step_modules import ScorePairs
from bifamily_dcgan import DCGANDiscriminatorConfig, DCGANEncoderConfig, DCGANGeneratorConfig
from bifamily_dcgan.discriminator import MinibatchStd

LATENT = 5
TINY_G = DCGANGeneratorConfig(ch=4, max_ch=16)
TINY_E = DCGANEncoderConfig(ch=4, max_ch=16)
TINY_D = DCGANDiscriminatorConfig(ch=4, max_ch=16, z_width=8, joint_width=8)
CONFIGS = [DCGANGeneratorConfig, DCGANEncoderConfig, DCGANDiscriminatorConfig]
SECTIONS = ["generator", "encoder", "discriminator"]


def context(resolution: int = 16, channels: int = 3, **kwargs: Any) -> BuildContext:
    return BuildContext(resolution=resolution, channels=channels, latent_dim=LATENT, **kwargs)


def seeded_images(n: int, channels: int, resolution: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, channels, resolution, resolution, generator=generator) * 2 - 1


def test_registers_one_component_of_each_kind() -> None:
    generators: dict[str, type] = {}
    encoders: dict[str, type] = {}
    discriminators: dict[str, type] = {}
    bifamily_dcgan.bifamily_register_generators(register=generators.__setitem__)
    bifamily_dcgan.bifamily_register_encoders(register=encoders.__setitem__)
    bifamily_dcgan.bifamily_register_discriminators(register=discriminators.__setitem__)
    registered = {"generator": generators, "encoder": encoders, "discriminator": discriminators}
    assert registered == {
        "generator": {"dcgan": DCGANGeneratorConfig},
        "encoder": {"dcgan": DCGANEncoderConfig},
        "discriminator": {"dcgan": DCGANDiscriminatorConfig},
    }


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_every_field_is_documented_and_structures_from_a_recipe_table(config_cls: type) -> None:
    assert all(field.metadata.get("help") for field in attrs.fields(config_cls))
    assert structure({"ch": 8}, config_cls, "$.x") == config_cls(ch=8)


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_dropout_must_leave_something_through(dropout: float) -> None:
    with pytest.raises(RecipeError, match=r"^\$\.discriminator\.dropout: must be in"):
        structure({"dropout": dropout}, DCGANDiscriminatorConfig, "$.discriminator")


@pytest.mark.parametrize("resolution", [8, 16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_at_every_resolution(resolution: int, channels: int) -> None:
    ctx = context(resolution, channels)
    G, E, D = TINY_G.build(ctx), TINY_E.build(ctx), TINY_D.build(ctx)
    assert isinstance(G, Generator) and isinstance(E, EncoderBackbone)
    assert isinstance(D, JointDiscriminator) and not D.has_batch_statistics
    assert (G.latent_dim, G.resolution, G.channels) == (LATENT, resolution, channels)
    assert (E.resolution, E.channels) == (resolution, channels)
    assert (D.latent_dim, D.resolution, D.channels) == (LATENT, resolution, channels)

    z = torch.randn(3, LATENT)
    x = G(z)
    assert x.shape == (3, channels, resolution, resolution)
    # The last conv map is 4x4 with width min(4 * 2^(k-1), 16), k = log2(resolution / 4).
    flat = 16 * min(4 << (resolution.bit_length() - 4), 16)
    assert E.feature_dim == flat
    assert E(x).shape == E.features(x).shape == (3, flat)
    scores = D(x, z)
    assert isinstance(scores, Scores)
    for score in scores:
        assert score.shape == (3,) and torch.isfinite(score).all()


def test_generator_outputs_stay_in_the_image_range() -> None:
    G = TINY_G.build(context(16))
    with torch.no_grad():  # batch norm undoes any scaling of z, so saturate the output layer itself
        G.to_image.weight.mul_(1000)
    x = G(torch.randn(8, LATENT))
    assert x.abs().max() <= 1
    assert x.abs().max() > 0.99


def test_encoder_projection_sets_feature_dim_but_not_the_evaluated_features() -> None:
    E = attrs.evolve(TINY_E, features=7).build(context(16))
    x = seeded_images(4, 3, 16)
    assert E.feature_dim == 7
    assert E(x).shape == (4, 7)
    assert E.features(x).shape == (4, 16 * 8)


def test_encoder_input_resolution_can_differ_from_the_generators() -> None:
    E = TINY_E.build(context(16, encoder_resolution=32))
    assert E.resolution == 32
    assert E(seeded_images(2, 3, 32)).shape == (2, E.feature_dim)


def test_without_unary_heads_only_the_joint_score_exists() -> None:
    D = attrs.evolve(TINY_D, unary=False).build(context(16))
    scores = D(seeded_images(3, 3, 16), torch.randn(3, LATENT))
    assert scores.s_x is None and scores.s_z is None
    assert scores.s_xz is not None and scores.s_xz.shape == (3,)


@pytest.mark.parametrize("score", ["s_x", "s_z", "s_xz"])
def test_scores_are_differentiable_in_their_inputs(score: str) -> None:
    D = TINY_D.build(context(16))
    x = seeded_images(3, 3, 16).requires_grad_()
    z = torch.randn(3, LATENT, requires_grad=True)
    getattr(D(x, z), score).sum().backward()
    reaches_x = x.grad is not None and x.grad.abs().sum() > 0
    reaches_z = z.grad is not None and z.grad.abs().sum() > 0
    # The joint score sees both inputs, each unary score only its own.
    expected = {"s_x": (True, False), "s_z": (False, True), "s_xz": (True, True)}[score]
    assert (reaches_x, reaches_z) == expected


def test_minibatch_std_appends_each_groups_mean_feature_std() -> None:
    h = seeded_images(8, 3, 4)
    out = MinibatchStd(group=4)(h)
    assert out.shape == (8, 4, 4, 4) and torch.equal(out[:, :3], h)
    # Sample i belongs to group i mod 2; its feature is the group's std (biased, + 1e-8 under the
    # root) averaged over channels and positions, the same at every position.
    for members in ([0, 2, 4, 6], [1, 3, 5, 7]):
        expected = (h[members].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(out[members, 3], expected.expand(4, 4, 4), atol=1e-6)


@pytest.mark.parametrize(("n", "group"), [(6, 3), (5, 1), (2, 2), (1, 1)])
def test_minibatch_std_groups_by_the_largest_divisor_of_the_batch_up_to_its_size(n: int, group: int) -> None:
    h = seeded_images(n, 2, 4)
    expected = (h.reshape(group, n // group, 2, 4, 4).var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
    assert torch.allclose(MinibatchStd(group=4)(h)[:, 2, 0, 0], expected.repeat(group), atol=1e-6)


def test_minibatch_std_lets_d_score_a_sample_by_its_batchs_variety() -> None:
    D = attrs.evolve(TINY_D, minibatch_std=4).build(context(16))
    assert D.has_batch_statistics and not TINY_D.build(context(16)).has_batch_statistics
    D.eval()  # fixed spectral norms: no power iteration between the two calls
    x, z = seeded_images(8, 3, 16), torch.randn(8, LATENT)
    varied = D(x, z)
    collapsed = D(torch.cat([x[:1], x[:1].expand(7, -1, -1, -1)]), z)
    # Sample 0 and its latent are unchanged; only the rest of its batch lost its variety.
    assert not torch.allclose(varied.s_x[0], collapsed.s_x[0])
    assert torch.equal(varied.s_z, collapsed.s_z)


def test_with_minibatch_std_real_and_fake_pairs_are_scored_apart() -> None:
    pairs = ScorePairs(attrs.evolve(TINY_D, minibatch_std=4).build(context(16))).eval()
    x, z_hat, z = seeded_images(8, 3, 16), torch.randn(8, LATENT), torch.randn(8, LATENT)
    real, _ = pairs(x, z_hat, seeded_images(8, 3, 16) * 0.1, z)
    real_again, _ = pairs(x, z_hat, torch.zeros(8, 3, 16, 16), z)
    assert all(torch.equal(a, b) for a, b in zip(real, real_again))


def test_dropout_acts_in_training_mode_only() -> None:
    x, z = seeded_images(4, 3, 16), torch.randn(4, LATENT)
    plain = attrs.evolve(TINY_D, spectral_norm=False)
    without = plain.build(context(16))
    assert all(torch.equal(a, b) for a, b in zip(without(x, z), without(x, z)))
    D = attrs.evolve(plain, dropout=0.5).build(context(16))
    assert any(isinstance(module, nn.Dropout) for module in D.modules())
    assert not torch.equal(D(x, z).s_xz, D(x, z).s_xz)
    D.eval()
    assert all(torch.equal(a, b) for a, b in zip(D(x, z), D(x, z)))


def test_eval_mode_with_spectral_norm_and_dropout_is_deterministic() -> None:
    D = attrs.evolve(TINY_D, dropout=0.2).build(context(16)).eval()
    x, z = seeded_images(4, 3, 16), torch.randn(4, LATENT)
    assert all(torch.equal(a, b) for a, b in zip(D(x, z), D(x, z)))


def test_spectral_norm_bounds_every_layer_at_one() -> None:
    torch.manual_seed(0)
    D = DCGANDiscriminatorConfig(ch=8, max_ch=32, z_width=32, joint_width=32).build(context(16))
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    # Image convs 16 -> 8 -> 4, latent MLP, joint MLP and its output, unary heads.
    assert len(layers) == 2 + 2 + 3 + 2
    x, z = seeded_images(8, 3, 16), torch.randn(8, LATENT)
    for _ in range(10):  # each training-mode call runs one more power iteration
        D(x, z)
    for layer in layers:
        assert parametrize.is_parametrized(layer, "weight")
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)


def test_spectral_norm_can_be_switched_off() -> None:
    D = attrs.evolve(TINY_D, spectral_norm=False).build(context(16))
    assert not any(parametrize.is_parametrized(m) for m in D.modules())


@pytest.mark.parametrize("section", SECTIONS)
def test_channels_last_modules_and_inputs_compute_the_same_function(section: str) -> None:
    config = {"generator": TINY_G, "encoder": TINY_E, "discriminator": TINY_D}[section]
    z, x = torch.randn(3, LATENT), seeded_images(3, 3, 16)
    inputs = {"generator": [z], "encoder": [x], "discriminator": [x, z]}[section]
    module = config.build(context(16)).eval()
    expected = module(*inputs)
    module.to(memory_format=torch.channels_last)
    nhwc = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in inputs]
    torch.testing.assert_close(module(*nhwc), expected)


@pytest.mark.parametrize(
    ("section", "config"),
    [("generator", TINY_G), ("encoder", TINY_E), ("discriminator", TINY_D)],
)
@pytest.mark.parametrize("resolution", [4, 48, 12, 2])
def test_unbuildable_resolution_names_the_recipe_keys(
    section: str, config: object, resolution: int
) -> None:
    with pytest.raises(RecipeError) as caught:
        config.build(context(resolution))
    (problem,) = caught.value.problems
    assert problem.startswith("$.data.resolution: ")
    assert f"$.{section}" in problem and f"got {resolution}" in problem


def test_unbuildable_encoder_resolution_names_its_own_key() -> None:
    with pytest.raises(RecipeError, match=r"^\$\.data\.encoder_resolution: .*got 48"):
        TINY_E.build(context(16, encoder_resolution=48))


def test_generator_and_encoder_make_their_batch_norm_through_the_context() -> None:
    made: list[tuple[int, bool]] = []

    def recording_batch_norm(num_features: int, affine: bool = True) -> nn.Module:
        made.append((num_features, affine))
        return nn.BatchNorm2d(num_features, affine=affine)

    ctx = context(64, batch_norm=recording_batch_norm)
    G = DCGANGeneratorConfig(ch=4, max_ch=16).build(ctx)
    # 4x4 map at min(4 * 8, 16), then 16, 8, 4 on the way up to 32x32, and 4 again at 64x64.
    assert made == [(16, True), (16, True), (8, True), (4, True), (4, True)]
    made.clear()
    E = DCGANEncoderConfig(ch=4, max_ch=16).build(ctx)
    # Widths 4 (no batch norm on the input layer), 8, 16, 16 down to 4x4.
    assert made == [(8, True), (16, True), (16, True)]
    for module in (G, E):
        norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert len(norms) == (5 if module is G else 3)
        assert all(norm.num_batches_tracked == 0 for norm in norms)
        module(torch.randn(2, LATENT) if module is G else seeded_images(2, 3, 64))
        assert all(norm.num_batches_tracked == 1 for norm in norms)
