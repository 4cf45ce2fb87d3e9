"""The BigGAN generator ("biggan") and BigBiGAN joint discriminator ("bigbigan")."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from bifamily.context import BuildContext
from bifamily.errors import RecipeError
from bifamily.interfaces import Generator, Scores
from bifamily_biggan import (
    BigBiGANDiscriminatorConfig,
    BigGANGeneratorConfig,
    bifamily_register_discriminators,
    bifamily_register_generators,
)
from bifamily_biggan.layers import SelfAttention, SNLinear

TINY_G = BigGANGeneratorConfig(ch=4, shared_dim=8, attention=16)
TINY_D = BigBiGANDiscriminatorConfig(ch=4, attention=8, mlp_width=16, mlp_blocks=2)
# Chunks of z at each resolution (one per up-block plus the input layer); chunk size 3 in the tests.
CHUNKS = {32: 4, 64: 5, 128: 6, 256: 7}


pytestmark = pytest.mark.usefixtures("single_thread")


def context(resolution: int, latent_dim: int | None = None, **kwargs) -> BuildContext:
    latent_dim = 3 * CHUNKS[resolution] if latent_dim is None else latent_dim
    return BuildContext(resolution=resolution, channels=3, latent_dim=latent_dim, **kwargs)


def problems(excinfo: pytest.ExceptionInfo[RecipeError]) -> str:
    return "\n".join(excinfo.value.problems)


def test_registered_names():
    registered: dict[str, type] = {}
    bifamily_register_generators(register=registered.__setitem__)
    bifamily_register_discriminators(register=registered.__setitem__)
    assert registered == {"biggan": BigGANGeneratorConfig, "bigbigan": BigBiGANDiscriminatorConfig}
    for cls in registered.values():
        assert all(field.metadata.get("help") for field in attrs.fields(cls))


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_generator_shapes_and_range(resolution):
    torch.manual_seed(0)
    ctx = context(resolution)
    generator = TINY_G.build(ctx)
    images = generator(torch.randn(2, ctx.latent_dim) * 3)
    assert images.shape == (2, 3, resolution, resolution)
    assert images.abs().max() <= 1 and images.std() > 0
    declared = (generator.latent_dim, generator.resolution, generator.channels)
    assert declared == (ctx.latent_dim, resolution, 3)


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_discriminator_shapes(resolution):
    torch.manual_seed(0)
    discriminator = TINY_D.build(context(resolution, latent_dim=5))
    scores = discriminator(torch.rand(3, 3, resolution, resolution) * 2 - 1, torch.randn(3, 5))
    assert isinstance(scores, Scores)
    for score in scores:
        assert score.shape == (3,) and score.dtype == torch.float32 and torch.isfinite(score).all()
    assert discriminator.has_batch_statistics is False


@contextlib.contextmanager
def recording_latent_consumers(generator) -> Iterator[list[list[torch.Tensor]]]:
    """Collects the input layer's input (consumer 0) and each block's conditioning vector (1, 2, ...)."""
    seen: list[list[torch.Tensor]] = [[] for _ in range(len(generator.blocks) + 1)]
    consumers = [(generator.input, 0)] + [(block, 1) for block in generator.blocks]
    handles = [
        module.register_forward_pre_hook(
            lambda m, args, i=index, a=argument: seen[i].append(args[a].detach())
        )
        for index, (module, argument) in enumerate(consumers)
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture(scope="module")
def generator_128():
    torch.manual_seed(0)
    return TINY_G.build(context(128)).eval()


@pytest.mark.parametrize("chunk", range(6))
def test_each_z_chunk_reaches_only_its_own_block(generator_128, chunk):
    z = torch.randn(2, 18)
    perturbed = z.clone()
    perturbed[:, 3 * chunk : 3 * chunk + 3] += 1.0
    with recording_latent_consumers(generator_128) as seen:
        generator_128(z)
        generator_128(perturbed)
    changed = [not torch.equal(before, after) for before, after in seen]
    assert changed == [index == chunk for index in range(6)]
    shared = generator_128.shared.detach().expand(2, -1)
    assert torch.equal(seen[0][0], z[:, :3])
    for index in range(1, 6):
        assert torch.equal(seen[index][0], torch.cat([shared, z[:, 3 * index : 3 * index + 3]], 1))


def test_non_hierarchical_generator_feeds_all_of_z_to_the_input_layer():
    generator = attrs.evolve(TINY_G, hierarchical=False).build(context(32, latent_dim=7)).eval()
    z = torch.randn(2, 7)
    with recording_latent_consumers(generator) as seen:
        generator(z)
    assert torch.equal(seen[0][0], z)
    for conditions in seen[1:]:
        assert torch.equal(conditions[0], generator.shared.detach().expand(2, -1))


@pytest.mark.parametrize(
    ("config", "resolution", "attention", "expected_channels"),
    [
        (TINY_G, 128, 64, 8),  # G: after the block that outputs 64x64, 2 * ch channels
        (TINY_G, 32, 16, 16),
        (TINY_D, 128, 64, 4),  # D: after the first block, ch channels
        (TINY_D, 32, 8, 16),  # the first of the blocks that output 8x8
    ],
)
def test_attention_placement(config, resolution, attention, expected_channels):
    model = attrs.evolve(config, attention=attention).build(context(resolution))
    layers = [m for m in model.modules() if isinstance(m, SelfAttention)]
    assert len(layers) == 1
    shapes = []
    layers[0].register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape[1:])))
    z = torch.randn(2, 3 * CHUNKS[resolution])
    if isinstance(model, Generator):
        model(z)
    else:
        model(torch.rand(2, 3, resolution, resolution), z)
    assert shapes == [(expected_channels, attention, attention)]


def test_attention_zero_means_none():
    generator = attrs.evolve(TINY_G, attention=0).build(context(32))
    discriminator = attrs.evolve(TINY_D, attention=0).build(context(32))
    for model in (generator, discriminator):
        assert not any(isinstance(m, SelfAttention) for m in model.modules())


def test_self_attention_matches_the_sagan_formula():
    torch.manual_seed(0)
    attention = SelfAttention(16).eval()
    with torch.no_grad():
        attention.gamma.fill_(0.5)
    x = torch.randn(2, 16, 8, 8)
    query = attention.query(x).flatten(2)  # (N, 2, 64)
    key = F.max_pool2d(attention.key(x), 2).flatten(2)  # (N, 2, 16)
    value = F.max_pool2d(attention.value(x), 2).flatten(2)  # (N, 8, 16)
    beta = torch.softmax(query.transpose(1, 2) @ key, dim=-1)  # (N, 64, 16), no 1/sqrt(d) scaling
    expected = x + 0.5 * attention.out((value @ beta.transpose(1, 2)).view(2, 8, 8, 8))
    torch.testing.assert_close(attention(x), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        attention.gamma.zero_()
    assert torch.equal(attention(x), x)


def test_bad_resolution_is_a_recipe_error():
    for config in (TINY_G, TINY_D):
        with pytest.raises(RecipeError) as excinfo:
            config.build(BuildContext(resolution=48, channels=3, latent_dim=12))
        assert "$.data.resolution: 48" in problems(excinfo)


def test_bad_attention_is_a_recipe_error_naming_both_keys():
    with pytest.raises(RecipeError) as excinfo:
        attrs.evolve(TINY_G, attention=64).build(context(32))
    assert "$.generator.attention: 64" in problems(excinfo)
    assert "$.data.resolution = 32" in problems(excinfo)
    with pytest.raises(RecipeError) as excinfo:
        attrs.evolve(TINY_D, attention=128).build(context(128))
    assert "$.discriminator.attention: 128" in problems(excinfo)
    assert "$.data.resolution = 128" in problems(excinfo)


def test_latent_that_does_not_split_is_a_recipe_error():
    with pytest.raises(RecipeError) as excinfo:
        TINY_G.build(context(256, latent_dim=120))
    message = problems(excinfo)
    assert message.startswith("$.prior.dim: 120") and "7 equal chunks" in message
    assert "$.generator.hierarchical" in message
    attrs.evolve(TINY_G, hierarchical=False).build(context(256, latent_dim=120))


def test_every_problem_is_reported_at_once():
    with pytest.raises(RecipeError) as excinfo:
        attrs.evolve(TINY_G, attention=128).build(context(64, latent_dim=16))
    assert [line.split(":")[0] for line in excinfo.value.problems] == [
        "$.generator.attention",
        "$.prior.dim",
    ]


def test_scores_depend_on_the_right_inputs():
    torch.manual_seed(0)
    discriminator = TINY_D.build(context(32, latent_dim=6))
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    z = torch.randn(2, 6, requires_grad=True)
    s_x, s_z, s_xz = discriminator(x, z)
    depends = {}
    for name, score in (("s_x", s_x), ("s_z", s_z), ("s_xz", s_xz)):
        grads = torch.autograd.grad(score.sum(), [x, z], retain_graph=True, allow_unused=True)
        depends[name] = tuple(g is not None and g.abs().sum().item() > 0 for g in grads)
    assert depends == {"s_x": (True, False), "s_z": (False, True), "s_xz": (True, True)}


def test_discriminator_never_mixes_samples():
    torch.manual_seed(0)
    discriminator = TINY_D.build(context(32, latent_dim=6))
    x, z = torch.rand(3, 3, 32, 32), torch.randn(3, 6)
    before = discriminator.eval()(x, z)
    x[0], z[0] = -x[0], -z[0]
    after = discriminator(x, z)
    for b, a in zip(before, after):
        torch.testing.assert_close(a[1:], b[1:])
        assert a[0] != b[0]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in discriminator.modules())


def _spectral_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _with_top_singular_value_three(shape: torch.Size) -> torch.Tensor:
    """A random weight whose flattened matrix has singular values 3, then at most 1.5 (a clear gap)."""
    rows, cols = shape[0], shape[1:].numel()
    left = torch.linalg.qr(torch.randn(rows, rows))[0]
    right = torch.linalg.qr(torch.randn(cols, cols))[0]
    values = torch.rand(min(rows, cols)) * 1.5
    values[0] = 3.0
    return (left[:, : len(values)] * values) @ right[:, : len(values)].T


def test_every_conv_and_linear_is_spectrally_normalised_to_one():
    torch.manual_seed(0)
    generator = TINY_G.build(context(32))
    discriminator = TINY_D.build(context(32, latent_dim=6))
    layers = _spectral_layers(generator) + _spectral_layers(discriminator)
    for layer in layers:
        assert parametrize.is_parametrized(layer, "weight")
        assert isinstance(layer.parametrizations.weight[0], _SpectralNorm)
        original = layer.parametrizations.weight.original
        with torch.no_grad():
            original.copy_(_with_top_singular_value_three(original.shape).view_as(original))
    for _ in range(20):  # one power iteration per training-mode forward
        generator(torch.randn(2, 12))
        discriminator(torch.rand(2, 3, 32, 32), torch.randn(2, 6))
    for layer in layers:
        top = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert top == pytest.approx(1.0, abs=1e-4)


def test_power_iteration_runs_outside_autocast():
    generator = TINY_G.build(context(32))
    discriminator = TINY_D.build(context(32, latent_dim=12))
    autocast_seen = []
    for layer in _spectral_layers(generator) + _spectral_layers(discriminator):
        layer.parametrizations.weight[0].register_forward_pre_hook(
            lambda m, args: autocast_seen.append(torch.is_autocast_enabled("cpu"))
        )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = torch.randn(2, 12)
        images = generator(z)
        scores = discriminator(images, z)
    assert images.dtype == torch.bfloat16  # the convolutions themselves do run in bfloat16
    assert autocast_seen and not any(autocast_seen)
    assert all(score.dtype == torch.float32 for score in scores)


def test_generator_batch_norms_come_from_the_context():
    calls: list[tuple[int, bool]] = []

    def counting_batch_norm(num_features: int, affine: bool = True) -> nn.Module:
        calls.append((num_features, affine))
        return nn.BatchNorm2d(num_features, affine=affine)

    generator = TINY_G.build(context(128, batch_norm=counting_batch_norm))
    widths = [64, 64, 32, 16, 8, 4]  # ch 4 x (16, 16, 8, 4, 2, 1)
    conditional = [(w, False) for a, b in zip(widths, widths[1:]) for w in (a, b)]
    assert calls == conditional + [(4, True)]
    batch_norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batch_norms) == len(calls)


def test_channels_last_gives_the_same_outputs():
    torch.manual_seed(0)
    generator = attrs.evolve(TINY_G, attention=32).build(context(32)).eval()
    discriminator = attrs.evolve(TINY_D, attention=16).build(context(32, latent_dim=12)).eval()
    for model in (generator, discriminator):
        for attention in (m for m in model.modules() if isinstance(m, SelfAttention)):
            nn.init.constant_(attention.gamma, 1.0)
    z, x = torch.randn(2, 12), torch.rand(2, 3, 32, 32)
    g_last = copy.deepcopy(generator).to(memory_format=torch.channels_last)
    d_last = copy.deepcopy(discriminator).to(memory_format=torch.channels_last)
    images = g_last(z)
    assert images.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(images, generator(z), rtol=1e-4, atol=1e-5)
    x_last = x.contiguous(memory_format=torch.channels_last)
    for a, b in zip(d_last(x_last, z), discriminator(x, z)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def biggan_generator_parameters(ch: int, z: int, shared: int, widths: list[int], attn: int) -> int:
    """BigGAN G's parameter count from its layer shapes (hierarchical, attention after block attn)."""
    chunk = z // len(widths)
    condition = shared + chunk
    total = shared + chunk * widths[0] * 16 + widths[0] * 16  # shared bias, input linear
    for a, b in zip(widths, widths[1:]):
        total += 2 * condition * (a + b)  # conditional BN gains and biases
        total += 9 * a * b + b + 9 * b * b + b + a * b + b  # conv1, conv2, 1x1 skip
    c = widths[attn + 1]
    total += 2 * c * (c // 8) + c * (c // 2) * 2 + 1  # query, key, value, out, gamma
    return total + 2 * widths[-1] + 9 * widths[-1] * 3 + 3  # output BN and conv


def test_generator_parameter_count_formula_and_biggan_128():
    for ch in (8,):
        widths = [m * ch for m in (16, 16, 8, 4, 2, 1)]
        generator = attrs.evolve(TINY_G, ch=ch, attention=64).build(context(128))
        count = sum(p.numel() for p in generator.parameters())
        assert count == biggan_generator_parameters(ch, 18, 8, widths, 3)
    full = biggan_generator_parameters(96, 120, 128, [m * 96 for m in (16, 16, 8, 4, 2, 1)], 3)
    assert full == 70_306_116
    # ajbrock/BigGAN-PyTorch's conditional G has a 1000 x 128 class embedding instead of the bias.
    assert full - 128 + 1000 * 128 == 70_433_988


@pytest.mark.slow
def test_full_size_parameter_counts():
    ctx = BuildContext(resolution=128, channels=3, latent_dim=120)
    generator = BigGANGeneratorConfig().build(ctx)
    discriminator = BigBiGANDiscriminatorConfig().build(ctx)
    assert sum(p.numel() for p in generator.parameters()) == 70_306_116
    assert sum(p.numel() for p in discriminator.parameters()) == 160_379_172
    assert sum(p.numel() for p in discriminator.image_path.parameters()) == 86_444_833


def test_mlp_blocks_have_two_layers_and_a_projection_only_where_width_changes():
    discriminator = attrs.evolve(TINY_D, mlp_blocks=4, mlp_width=32).build(context(32, latent_dim=6))
    for path, in_features in ((discriminator.latent_path, 6), (discriminator.joint_path, 16 + 32)):
        linears = [m for m in path.modules() if isinstance(m, SNLinear)]
        assert len(linears) == 8 + 1
        assert [block.skip is not None for block in path.blocks] == [True, False, False, False]
        assert path.blocks[0].linear1.in_features == in_features
