"""``bench/mnist_probe.py`` end to end on a fake MNIST t10k file and a tiny recipe: it trains, reads
all five feature rows, writes ``--output`` and refuses to train into an existing run directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.idx_files import write_idx

REPO = Path(__file__).resolve().parents[2]
ROWS = {
    "trained_ema_encoder",
    "encoder_at_initialisation",
    "trained_ema_encoder_posterior_mean",
    "encoder_at_initialisation_posterior_mean",
    "raw_pixels",
}


def fake_t10k(root: Path) -> None:
    """10,000 images (the benchmark trains on 8000 and scores 2000): digit d lights row band d."""
    labels = np.arange(10_000) % 10
    images = np.random.default_rng(0).integers(0, 40, size=(10_000, 28, 28))
    for digit in range(10):
        images[labels == digit, 2 + 2 * digit : 4 + 2 * digit, 4:24] = 255
    write_idx(root / "t10k-images-idx3-ubyte", images)
    write_idx(root / "t10k-labels-idx1-ubyte", labels)


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.mnist_probe", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist_probe")
    fake_t10k(folder)
    tiny = folder / "tiny.toml"
    tiny.write_text(
        f'extends = "{(REPO / "recipes" / "bigan.toml").as_posix()}"\n'
        "[train]\nbatch_size = 8\nprecision = \"fp32\"\n"
        "[generator]\nch = 4\n[encoder]\nch = 4\n"
        "[discriminator]\nch = 4\nz_width = 16\njoint_width = 16\n"
    )
    arguments = [
        "--steps", "2", "--probe-steps", "20", "--k", "5", "--root", str(folder),
        "--recipe", str(tiny), "--set", "optim.e_lr=0.0123", "--run-dir", str(folder / "run"), "--output", str(folder / "result.json"),
    ]
    completed = bench(*arguments)
    return folder, arguments, completed


def test_trains_then_scores_every_feature_row(setup):
    folder, _, completed = setup
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads((folder / "result.json").read_text())
    assert result["training_steps"] == 2
    assert result["recipe"].endswith("tiny.toml") and "--set=optim.e_lr=0.0123" in result["reproduce"]
    assert "e_lr = 0.0123" in (folder / "run" / "recipe.toml").read_text()
    assert set(result["results"]) == ROWS
    for name, row in result["results"].items():
        assert 0.0 <= row["probe_top1"] <= row["probe_top5"] <= 1.0, name
        assert 0.0 <= row["knn_top1"] <= row["knn_top5"] <= 1.0, name
    # The fake digits are bands of bright rows: separable from the pixels by construction.
    assert result["results"]["raw_pixels"]["knn_top1"] == 1.0
    assert result["results"]["raw_pixels"]["probe_top1"] > 0.9


def test_refuses_an_existing_run_directory_before_training(setup):
    folder, arguments, _ = setup
    before = (folder / "result.json").read_bytes()
    completed = bench(*arguments)
    assert completed.returncode == 2
    assert "--run-dir" in completed.stderr and "exists" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert (folder / "result.json").read_bytes() == before
