"""Issue 3's bad input through the CLI on a shipped BigBiGAN recipe: a resolution the architecture
cannot build, an attention resolution that does not occur, a latent size that does not split into
the chunks (and the encoders' own limits) are each a one-line-per-problem recipe error naming the
keys, exit code 2, before anything is trained or written."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bifamily.cli import main

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "bigbigan_small.toml"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "data.resolution=48",
            [
                "$.data.resolution: 48 has no BigGAN layout for $.generator; use one of 32, 64, 128, 256",
                "$.data.resolution: 48 has no BigGAN layout for $.discriminator; use one of 32, 64, 128, 256",
            ],
        ),
        (
            "generator.attention=64",
            ["$.generator.attention: 64 is not a feature-map side of the generator at "
             "$.data.resolution = 32; use 0 (no attention) or one of 8, 16, 32"],
        ),
        (
            "discriminator.attention=32",
            ["$.discriminator.attention: 32 is not a feature-map side of the discriminator at "
             "$.data.resolution = 32; use 0 (no attention) or one of 8, 16"],
        ),
        (
            "prior.dim=63",
            ["$.prior.dim: 63 does not split into 4 equal chunks (one for the input layer, one for "
             "each of the 3 blocks at $.data.resolution = 32), as $.generator.hierarchical = true "
             "requires; use a multiple of 4 or set $.generator.hierarchical = false"],
        ),
        (
            "data.encoder_resolution=12",
            ["$.data.encoder_resolution: the resnet_v2 encoder needs images of at least 16 px, got 12"],
        ),
        (
            'encoder={kind = "revnet", base_width = 7}',
            ["$.encoder.base_width: must be an even number > 0 (RevNet's first bottlenecks are "
             "base_width * width / 2 wide), got 7"],
        ),
    ],
    ids=["resolution", "generator attention", "discriminator attention", "latent chunks",
         "encoder resolution", "revnet width"],
)
def test_validate_refuses_with_one_keyed_line_per_problem(
    override: str, expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["validate", str(RECIPE), "--set", override])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.splitlines() == [f"error: {RECIPE}: {line}" for line in expected]
    assert result.stdout == "" and list(tmp_path.iterdir()) == []
