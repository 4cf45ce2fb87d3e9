"""Per-block widths (generator.multipliers, discriminator.multipliers) and the discriminator's
per-block downsampling: defaults keep BigGAN's layouts exactly, explicit lists set every block, bad
lists are keyed recipe errors, and recipes/bench/mnist32_matched.toml reproduces the anchor's sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bifamily.cli import main
from bifamily.context import BuildContext
from bifamily.errors import RecipeError
from bifamily.plugins import default_plugins
from bifamily.recipe import load
from bifamily.session import prepare
from bifamily_biggan import BigBiGANDiscriminatorConfig, BigGANGeneratorConfig

REPO = Path(__file__).resolve().parents[2]
MATCHED = REPO / "recipes" / "bench" / "mnist32_matched.toml"
CHUNKS = {32: 4, 64: 5, 128: 6, 256: 7}


pytestmark = pytest.mark.usefixtures("single_thread")


def context(resolution: int, chunk: int = 2) -> BuildContext:
    return BuildContext(resolution=resolution, channels=3, latent_dim=chunk * CHUNKS[resolution])


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def conv(in_channels: int, out_channels: int, kernel: int) -> int:
    return in_channels * out_channels * kernel * kernel + out_channels


@pytest.mark.parametrize(
    ("resolution", "generator_count", "discriminator_count"),
    [(32, 66_252, 71_652), (128, 493_628, 609_500)],
)
def test_default_layouts_keep_the_parameter_counts_they_had_before_the_option(
    resolution, generator_count, discriminator_count
):
    ctx = context(resolution)
    generator = BigGANGeneratorConfig(ch=8, shared_dim=8, attention=16).build(ctx)
    discriminator = BigBiGANDiscriminatorConfig(ch=8, attention=16, mlp_width=16, mlp_blocks=2).build(ctx)
    assert (count(generator), count(discriminator)) == (generator_count, discriminator_count)


def test_writing_out_biggans_layout_builds_the_same_modules_as_the_default():
    ctx = context(64)
    generator = dict(ch=4, shared_dim=8, attention=32)
    assert shapes(BigGANGeneratorConfig(**generator, multipliers=(16, 16, 8, 4, 2)).build(ctx)) == shapes(
        BigGANGeneratorConfig(**generator).build(ctx)
    )
    discriminator = dict(ch=4, attention=16, mlp_width=8, mlp_blocks=1)
    explicit = BigBiGANDiscriminatorConfig(
        **discriminator, multipliers=(1, 2, 4, 8, 16), downsample=(True, True, True, True, False)
    )
    assert shapes(explicit.build(ctx)) == shapes(BigBiGANDiscriminatorConfig(**discriminator).build(ctx))


def test_generator_multipliers_set_the_input_and_every_block_width():
    ch, shared_dim, chunk = 2, 8, 3
    config = BigGANGeneratorConfig(ch=ch, multipliers=(4, 3, 2, 1), shared_dim=shared_dim, attention=16)
    generator = config.build(context(32, chunk))
    widths = [8, 6, 4, 2]
    assert generator.input.weight.shape == (widths[0] * 4 * 4, chunk)
    assert [tuple(block.conv1.weight.shape) for block in generator.blocks] == [
        (6, 8, 3, 3), (4, 6, 3, 3), (2, 4, 3, 3)
    ]
    assert generator.attention.query.weight.shape == (1, 4, 1, 1)  # after the 16x16 block, 4 channels
    assert generator.output_conv.weight.shape == (3, 2, 3, 3)
    # shared vector, input layer, per block two conditional BNs ([shared, chunk] -> gain and bias,
    # no bias terms), two 3x3 convs and the 1x1 skip; the attention layer; output BN and conv
    condition = shared_dim + chunk
    blocks = sum(
        2 * condition * (i + o) + conv(i, o, 3) + conv(o, o, 3) + conv(i, o, 1)
        for i, o in zip(widths, widths[1:])
    )
    attention = 2 * 4 * 1 + 2 * 4 * 2 + 1
    expected = shared_dim + chunk * 128 + 128 + blocks + attention + 2 * 2 + conv(2, 3, 3)
    assert count(generator) == expected
    assert generator(torch.randn(2, 4 * chunk)).shape == (2, 3, 32, 32)


def test_discriminator_multipliers_and_downsample_set_every_blocks_width_and_side():
    config = BigBiGANDiscriminatorConfig(
        ch=2, multipliers=(1, 2, 3, 3), downsample=(True, True, True, False), attention=0,
        mlp_width=4, mlp_blocks=1,
    )
    discriminator = config.build(context(32))
    image_path = discriminator.image_path
    widths = [3, 2, 4, 6, 6]
    convs = [tuple(block.conv1.weight.shape[:2]) for block in image_path.blocks]
    assert convs == [(2, 3), (4, 2), (6, 4), (6, 6)]
    # a 1x1 skip wherever the block downsamples or changes the width: not in the last block
    expected = sum(conv(i, o, 3) + conv(o, o, 3) for i, o in zip(widths, widths[1:]))
    expected += conv(3, 2, 1) + conv(2, 4, 1) + conv(4, 6, 1)
    assert count(image_path) == expected
    sides = []
    for block in image_path.blocks:
        block.register_forward_hook(lambda _module, _inputs, output: sides.append(output.shape[-1]))
    scores = discriminator(torch.randn(2, 3, 32, 32), torch.randn(2, 8))
    assert sides == [16, 8, 4, 4] and scores.s_xz.shape == (2,)


def test_attention_sides_follow_the_given_downsampling():
    ctx = context(32)
    with pytest.raises(RecipeError) as excinfo:
        BigBiGANDiscriminatorConfig(ch=2, attention=4, mlp_width=4, mlp_blocks=1).build(ctx)
    assert excinfo.value.problems == [
        "$.discriminator.attention: 4 is not a feature-map side of the discriminator at "
        "$.data.resolution = 32; use 0 (no attention) or one of 8, 16"
    ]
    config = BigBiGANDiscriminatorConfig(
        ch=2, attention=4, downsample=(True, True, True, False), mlp_width=4, mlp_blocks=1
    )
    assert config.build(ctx).image_path.attention_index == 2


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "generator.multipliers=[4, 4, 2]",
            "$.generator.multipliers: has 3 entries, but $.data.resolution = 32 needs 4, one for the 4x4 "
            "input and each up-block's output (BigGAN's: [4, 4, 4, 4]; [] selects it)",
        ),
        (
            "discriminator.multipliers=[1, 2, 4, 4, 4]",
            "$.discriminator.multipliers: has 5 entries, but $.data.resolution = 32 needs 4, one for each "
            "down-block (BigGAN's: [4, 4, 4, 4]; [] selects it)",
        ),
        (
            "discriminator.downsample=[true, true]",
            "$.discriminator.downsample: has 2 entries, but $.data.resolution = 32 needs 4, one for each "
            "down-block (BigGAN's: [true, true, false, false]; [] selects it)",
        ),
        (
            "generator.multipliers=[4, 0, 2, 1]",
            "$.generator.multipliers: every entry must be > 0, got [4, 0, 2, 1]",
        ),
        (
            "discriminator.multipliers=[1, 2.5, 4, 4]",
            "$.discriminator.multipliers[1]: expected int, got float 2.5",
        ),
    ],
    ids=["generator length", "discriminator length", "downsample length", "zero width", "float width"],
)
def test_bad_lists_are_one_keyed_line_and_exit_2(override, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["validate", str(MATCHED), "--set", override])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"error: {MATCHED}: {expected}"]


@pytest.fixture(scope="module")
def reference() -> dict:
    from bench.suite.anchor import REFERENCE

    return REFERENCE


def test_matched_recipe_has_the_anchors_layout_and_sizes(reference):
    plugins = default_plugins()
    model = prepare(load(MATCHED, plugins), plugins=plugins).model
    generator, discriminator = model.generator, model.discriminator
    # G: 4x4x256 input, up-blocks 256-256-128-64, attention on the 128-channel 16x16 map
    assert generator.input.weight.shape[0] == 256 * 4 * 4
    assert [block.conv2.weight.shape[0] for block in generator.blocks] == [256, 128, 64]
    assert generator.attention_index == 1 and generator.attention.query.weight.shape[1] == 128
    # F: down-blocks 64-128-256-256 ending at 4x4, attention on the 64-channel 16x16 map
    image_path = discriminator.image_path
    assert [block.conv2.weight.shape[0] for block in image_path.blocks] == [64, 128, 256, 256]
    assert [block.downsample for block in image_path.blocks] == [True, True, True, False]
    assert image_path.attention_index == 0 and image_path.attention.query.weight.shape[1] == 64

    counts = model.parameter_counts()
    for name in ("generator", "discriminator"):
        assert counts[name] == pytest.approx(reference["parameters"][name], rel=0.05), name
    image = count(image_path) + count(discriminator.image_head)
    assert image == pytest.approx(reference["discriminator_parameters"]["image"], rel=0.05)
