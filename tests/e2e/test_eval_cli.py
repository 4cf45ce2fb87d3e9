"""Evaluation end to end: metrics scheduled during a tiny run, the best snapshot, and `bifamily eval`,
`sample`, `reconstruct` and `plot` from that run's snapshots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bifamily.checkpoint import read_snapshot
from bifamily.checkpoint.manager import CheckpointManager
from bifamily.cli import main
from bifamily.evaluation.feature_networks import INCEPTION_ENV, INCEPTION_FILE

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "recipes" / "quickstart.toml")
TINY = [
    "--set", "train.batch_size=8", "--set", "generator.ch=8", "--set", "encoder.ch=8", "--set", "prior.dim=16",
    "--set", "run.log_every=1", "--set", "run.sample_every=3", "--set", "run.checkpoint_every=3",
    "--set", "eval.train_samples=48", "--set", "eval.test_samples=24", "--set", "metrics.probe.steps=10",
    "--set", "eval.batch_size=32", "--set", "metrics.recon.images=8", "--set", "metrics.recon.iterations=2",
]
SCHEDULE = ["--set", "run.steps=3", "--set", "eval.every=2", "--set", "eval.metrics=probe,knn,recon",
            "--set", "eval.best=probe_top1"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    result = invoke("run", QUICKSTART, *TINY, *SCHEDULE, "--no-progress", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "linear probe top-1 on held-out images: EMA encoder" in result.output
    assert "k-NN top-1 on held-out images: EMA encoder" in result.output
    assert "probe_top1" in result.output  # the console table
    return out


def test_the_schedule_fires_at_multiples_of_every_and_at_the_last_step(tiny_run):
    scheduled = [(r["step"], r["metric"]) for r in records(tiny_run) if r["metric"] != "report"]
    assert scheduled == [(2, "probe"), (2, "knn"), (2, "recon"), (3, "probe"), (3, "knn"), (3, "recon")]
    assert sorted(p.name for p in (tiny_run / "eval" / "recon-iterated").iterdir()) == [
        "step-00000002.png", "step-00000003.png",
    ]


def test_records_carry_their_settings_and_the_report_comes_last(tiny_run):
    lines = records(tiny_run)
    probe = next(r for r in lines if r["metric"] == "probe")
    assert probe["settings"]["train_samples"] == 48 and probe["settings"]["test_samples"] == 24
    assert probe["settings"]["steps"] == 10 and probe["settings"]["features"] == "pooled"
    report = lines[-1]
    assert report["metric"] == "report" and report["step"] == 3
    final_probe = next(r for r in lines if r["metric"] == "probe" and r["step"] == 3)
    assert report["probe_top1"] == final_probe["probe_top1"]  # the schedule's final result, reused
    assert 0.0 <= report["probe_top1_init"] <= 1.0 and 0.0 <= report["knn_top1_init"] <= 1.0


def test_the_best_snapshot_holds_the_best_probe_accuracy(tiny_run):
    values = [(r["probe_top1"], r["step"]) for r in records(tiny_run) if r["metric"] == "probe"]
    best_value = max(value for value, _ in values)
    first_best_step = next(step for value, step in values if value == best_value)
    tensors, metadata = read_snapshot(tiny_run / "best" / "snapshot.safetensors")
    assert metadata["best_value_name"] == "probe_top1" and float(metadata["best_value"]) == best_value
    assert int(metadata["step"]) == first_best_step and "recipe" in metadata
    assert any(name.startswith("encoder_ema.") for name in tensors)


def test_eval_from_a_run_directory_appends_records(tiny_run):
    before = len(records(tiny_run))
    result = invoke("eval", str(tiny_run), "--metrics", "knn", "--set", "metrics.knn.k=3")
    assert result.exit_code == 0, result.output
    assert "knn_top1" in result.output
    [added] = records(tiny_run)[before:]
    assert added["metric"] == "knn" and added["step"] == 3 and added["settings"]["k"] == 3


def test_fid_with_a_random_feature_network_from_the_best_snapshot(tiny_run, tmp_path):
    result = invoke(
        "eval", str(tiny_run / "best"), "--metrics", "fid", "--set", "metrics.fid.feature_network=random_conv",
        "--set", "metrics.fid.samples=16", "--set", "metrics.fid.reference_samples=16",
        "--set", f"metrics.fid.cache_dir={json.dumps(str(tmp_path))}",
    )
    assert result.exit_code == 0, result.output
    fid = records(tiny_run)[-1]
    assert fid["metric"] == "fid" and fid["fid"] > 0 and fid["settings"]["feature_network"].startswith("random-conv")


def test_missing_inception_weights_exit_2_naming_the_file(tiny_run, monkeypatch, tmp_path):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    result = invoke("eval", str(tiny_run), "--metrics", "fid", "--set", "metrics.fid.feature_network=inception")
    assert result.exit_code == 2 and INCEPTION_FILE in result.stderr and "Traceback" not in result.output
    out = tmp_path / "run"
    result = invoke("run", QUICKSTART, *TINY, "--set", "eval.every=1", "--set", "eval.metrics=fid", "--out", str(out))
    assert result.exit_code == 2 and INCEPTION_FILE in result.stderr
    assert not out.exists()


def test_sample_writes_a_square_grid_from_a_snapshot_file(tiny_run, tmp_path):
    snapshot = tiny_run / "checkpoints" / "step-00000003" / "snapshot.safetensors"
    result = invoke("sample", str(snapshot), "-n", "6", "-o", str(tmp_path / "grid.png"))
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "grid.png").size == (3 * 98 + 2, 2 * 98 + 2)  # 32 px images shown at 96, 2 px border


def test_reconstruct_images_from_a_folder_with_the_iterated_strip(tiny_run, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    out = tmp_path / "recon.png"
    result = invoke("reconstruct", str(tiny_run), "--images", str(folder), "-o", str(out), "--iterations", "2")
    assert result.exit_code == 0, result.output
    assert "to a random other input" in result.output
    assert Image.open(out).size == (6 * 98 + 2, 98 + 2)  # three (input, reconstruction) pairs in a row
    assert Image.open(tmp_path / "recon-iterated.png").size == (3 * 98 + 2, 3 * 98 + 2)  # R_0..R_2, one row each


def test_plot_writes_curves_and_first_layer_filters(tiny_run, tmp_path):
    result = invoke("plot", str(tiny_run), "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    for name in ("losses.png", "metrics.png", "filters.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_plot_before_the_first_checkpoint_writes_the_curves(tiny_run, tmp_path):
    early = tmp_path / "early"
    (early / "checkpoints").mkdir(parents=True)
    for name in ("recipe.toml", "stats.jsonl", "metrics.jsonl"):
        (early / name).write_bytes((tiny_run / name).read_bytes())
    result = CliRunner().invoke(main, ["plot", str(early), "-o", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "no checkpoint yet, so no filters.png" in result.output
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["losses.png", "metrics.png"]


def test_probe_and_knn_refuse_an_unlabelled_data_set_before_training(tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((32, 32, 3), 20 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    data = f'data={{kind = "image_folder", root = {json.dumps(str(folder))}, holdout_fraction = 0.3}}'
    result = invoke("run", QUICKSTART, *TINY, "--set", data, "--set", "eval.every=1", "--set", "eval.metrics=knn",
                    "--set", "train.batch_size=4", "--out", str(out))
    assert result.exit_code == 2 and "needs class labels" in result.stderr
    assert not out.exists()


def test_stop_when_ends_the_run_at_the_first_evaluation_that_reaches_its_targets(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", QUICKSTART, *TINY, "--set", "run.steps=9", "--set", "eval.every=2", "--set", "eval.metrics=knn",
                    "--set", 'eval.stop_when="knn_top1 >= 0"', "--no-progress", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "stop_when reached at step 2 (knn_top1" in result.output
    assert [(r["step"], r["metric"]) for r in records(out)] == [(2, "knn"), (2, "report")]
    assert CheckpointManager(out / "checkpoints").latest_step() == 2  # written although checkpoint_every is 3
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-00000002.png"]


def test_a_distributed_run_evaluates_on_rank_0_alone_and_stops_with_it_without_hanging(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "bifamily", "run", QUICKSTART, *TINY, "--set", "run.steps=6", "--set", "eval.every=2",
        "--set", "eval.metrics=knn,recon", "--set", "eval.best=knn_top1", "--set", 'eval.report=""',
        "--set", 'eval.stop_when="knn_top1 >= 0"',
        "--set", "train.collective_timeout_s=120", "--nproc", "2", "--no-progress", "--out", str(out),
    ]
    env = {**os.environ, "BIFAMILY_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(r["step"], r["metric"]) for r in records(out)] == [(2, "knn"), (2, "recon")]
    assert CheckpointManager(out / "checkpoints").latest_step() == 2
    assert (out / "best" / "snapshot.safetensors").is_file()
