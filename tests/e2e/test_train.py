"""End to end on CPU in seconds: a tiny run writes its directory, and resuming equals not stopping."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from bifamily.cli import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "recipes" / "quickstart.toml")
TINY = [
    "--set", "train.batch_size=8", "--set", "generator.ch=8", "--set", "encoder.ch=8",
    "--set", "prior.dim=16", "--set", "train.d_steps=2", "--set", 'train.updates="alternating"', "--set", "run.log_every=2",
    "--set", "run.sample_every=4", "--set", "run.checkpoint_every=4",
    "--set", "discriminator.dropout=0.2",  # D noise must be restored too
    "--set", 'posterior.kind="gaussian"',  # and the posterior noise
]


def run(*args: str) -> str:
    result = CliRunner().invoke(main, ["run", QUICKSTART, *TINY, "--no-progress", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def final_snapshot(out: Path) -> dict[str, torch.Tensor]:
    latest = (out / "checkpoints" / "latest").read_text().strip()
    return load_file(out / "checkpoints" / latest / "snapshot.safetensors")


def test_tiny_run_writes_a_self_describing_run_directory(tmp_path):
    out = tmp_path / "run"
    output = run("--set", "run.steps=4", "--set", "eval.train_samples=64", "--set", "eval.test_samples=32",
                 "--set", "metrics.probe.steps=20", "--out", str(out))
    assert f"run directory: {out}" in output
    assert "linear probe top-1 on held-out images: EMA encoder" in output
    recipe = (out / "recipe.toml").read_text()
    assert "steps = 4" in recipe and 'kind = "dcgan"' in recipe
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [2, 4]
    assert {"loss_d", "loss_eg", "images_per_s"} <= set(stats[0])
    assert (out / "samples" / "step-00000004.png").exists()
    assert (out / "reconstructions" / "step-00000004.png").exists()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 <= metrics[-1]["probe_top1"] <= 1.0
    snapshot = final_snapshot(out)
    assert any(k.startswith("generator_ema.") for k in snapshot)
    assert any(k.startswith("encoder_ema.") for k in snapshot)


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
    common = ["--set", 'eval.report=""']
    straight, split = tmp_path / "straight", tmp_path / "split"
    run(*common, "--set", "run.steps=8", "--out", str(straight))
    run(*common, "--set", "run.steps=4", "--out", str(split))
    run(*common, "--set", "run.steps=8", "--out", str(split), "--resume")
    a, b = final_snapshot(straight), final_snapshot(split)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The log of the resumed run continues where the first one stopped, without duplicates.
    steps = [json.loads(line)["step"] for line in (split / "stats.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]
