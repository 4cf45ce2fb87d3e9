"""The BigBiGAN recipes as shipped, at their published sizes, run end to end (slow: minutes on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bifamily.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_one_training_step_of_bigbigan_highres_at_full_size(tmp_path):
    """E at 256 and G/D at 128 on the built-in data at those resolutions, batch 2, one step."""
    out = tmp_path / "run"
    args = [
        "run", str(REPO / "recipes" / "bigbigan_highres.toml"),
        "--set", 'data={kind = "procedural", resolution = 128, encoder_resolution = 256}',
        "--set", "train.batch_size=2", "--set", "run.steps=1", "--set", "eval.probe=false",
        "--set", 'run.device="cpu"', "--no-progress", "--out", str(out),
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / "samples" / "step-00000001.png").exists()
    assert (out / "checkpoints" / "latest").exists()
