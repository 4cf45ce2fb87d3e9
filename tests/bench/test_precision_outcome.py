"""``bench/precision_outcome.py``: the summary statistics exactly, and a tiny benchmark end to end
(two seeds in fp32 and bf16, then a second call that reuses the finished runs)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import precision_outcome

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "train.batch_size=8", "generator.ch=8", "encoder.ch=8", "discriminator.ch=8", "prior.dim=16", "run.steps=4",
    "run.log_every=1", "run.sample_every=4", "run.checkpoint_every=4", "eval.train_samples=40",
    "eval.test_samples=20", "metrics.probe.steps=5",
]


def row(probe, knn=0.0):
    return {"probe_top1": probe, "knn_top1": knn, "probe_gain": probe - 30, "loss_d": 4.0, "loss_eg": 2.0}


def test_means_deviations_and_the_standard_error_of_their_difference():
    summary = precision_outcome.summarise({"fp32": [row(40), row(44)], "bf16": [row(41), row(47), row(44)]})
    assert summary["fp32"]["probe_top1"] == {"mean": 42.0, "sd": math.sqrt(8)}
    assert summary["bf16"]["probe_top1"] == {"mean": 44.0, "sd": 3.0}
    difference = summary["difference"]["probe_top1"]
    assert difference["of_means"] == 2.0
    assert difference["standard_error"] == pytest.approx(math.sqrt(8 / 2 + 9 / 3))
    assert summary["difference"]["loss_d"] == {"of_means": 0.0, "standard_error": 0.0}


def bench(tmp_path: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "bench.precision_outcome", "--seeds", "2", "--parallel", "2", "--runs", str(tmp_path / "runs"),
        "--output", str(tmp_path / "out.json"), *[f"--set={item}" for item in TINY],
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_two_seeds_per_precision_end_to_end_and_finished_runs_are_reused(tmp_path):
    first = bench(tmp_path)
    assert first.returncode == 0, first.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert [r["seed"] for r in result["runs"]["fp32"]] == [0, 1] and [r["seed"] for r in result["runs"]["bf16"]] == [0, 1]
    for rows in result["runs"].values():
        for r in rows:
            assert 0 <= r["probe_top1"] <= 100 and r["training_seconds"] > 0
    assert set(result["summary"]["difference"]) == {"probe_top1", "knn_top1", "probe_gain", "loss_d", "loss_eg"}
    resolved = (tmp_path / "runs" / "bf16-seed1" / "recipe.toml").read_text()
    assert 'precision = "bf16"' in resolved and "seed = 1" in resolved
    second = bench(tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("reusing") == 4
    assert json.loads((tmp_path / "out.json").read_text())["runs"]["fp32"][0]["probe_top1"] == result["runs"]["fp32"][0]["probe_top1"]
