"""The BigBiGAN recipes as shipped, at their published sizes, run end to end.

Slow: on a 2-core CPU the high-resolution recipe's step (building its 322M parameters, two D updates
and one G+E update at batch 2, samples, reconstructions and a checkpoint) takes about 7 minutes and
12 GB of memory at peak.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from bifamily.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_one_training_step_of_bigbigan_highres_at_full_size(tmp_path):
    """E at 256 and G/D at 128 on the built-in data at those resolutions, batch 2, one step."""
    out = tmp_path / "run"
    args = [
        "run", str(REPO / "recipes" / "bigbigan_highres.toml"),
        "--set", 'data={kind = "procedural", resolution = 128, encoder_resolution = 256}',
        "--set", "train.batch_size=2", "--set", "run.steps=1", "--set", 'eval.report=""',
        "--set", 'run.device="cpu"', "--no-progress", "--out", str(out),
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert record["step"] == 1
    scores = [f"{side}_{name}" for side in ("real", "fake") for name in ("s_x", "s_z", "s_xz")]
    for key in ["loss_d", "loss_eg", *scores]:  # F, H and J all scored real and fake pairs
        assert math.isfinite(record[key]), key
    assert (out / "samples" / "step-00000001.png").exists()
    assert (out / "reconstructions" / "step-00000001.png").exists()
    assert (out / "checkpoints" / "latest").exists()
