"""``bench/quickstart_seeds.py``: the table's figures from reports exactly, and a tiny run end to end
(two seeds, then a second call that reuses the finished runs and their recorded wall times)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import quickstart_seeds
from bench.run_reports import final_values

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "train.batch_size=8", "generator.ch=8", "encoder.ch=8", "discriminator.ch=8", "prior.dim=16", "run.steps=4",
    "run.log_every=1", "run.sample_every=4", "run.checkpoint_every=4", "eval.train_samples=40",
    "eval.test_samples=20", "metrics.probe.steps=5",
]


def report(probe: float, probe_init: float) -> dict:
    return {"metric": "report", "probe_top1": probe, "probe_top1_init": probe_init, "knn_top1": 0.25, "knn_top1_init": 0.2}


def test_rows_are_percent_with_the_gain_and_the_summary_is_mean_and_sd():
    rows = [
        {"seed": 0, **quickstart_seeds.row_of(report(0.5, 0.3), 240.0)},
        {"seed": 1, **quickstart_seeds.row_of(report(0.4, 0.3), 250.0)},
    ]
    assert rows[0]["probe"] == 50.0 and rows[0]["probe_init"] == 30.0 and rows[0]["knn"] == 25.0
    assert rows[0]["probe_gain"] == pytest.approx(20.0) and rows[1]["probe_gain"] == pytest.approx(10.0)
    stats = quickstart_seeds.summary(rows)
    assert stats["wall_seconds"] == {"mean": 245.0, "sd": pytest.approx(50**0.5)}
    assert stats["probe_gain"]["mean"] == pytest.approx(15.0)
    assert "recognisable" not in stats  # no judge in these reports
    table = quickstart_seeds.format_table(rows, stats, {})
    assert table.splitlines()[2].startswith("| 0 | 240 | 30.0 | 50.0 | +20.0 |")
    assert "| mean ± sd | 245 ± 7.1 |" in table


def test_the_judge_figures_and_the_real_images_row():
    judged = {
        **report(0.5, 0.3), "judge_recognisable": 0.45, "judge_recognisable_real": 0.9, "judge_recognisable_ratio": 0.5,
        "judge_coverage": 0.8, "judge_coverage_real": 0.99, "judge_fd": 12.5, "judge_kid": 0.02,
    }
    row = quickstart_seeds.row_of(judged, 200.0)
    assert (row["recognisable"], row["recognisable_ratio"], row["coverage"], row["fd"], row["kid"]) == (45.0, 0.5, 0.8, 12.5, 0.02)
    assert quickstart_seeds.real_row(judged) == {"recognisable": 90.0, "coverage": 0.99}
    assert quickstart_seeds.real_row(report(0.5, 0.3)) == {}
    rows = [{"seed": 0, **row}]
    table = quickstart_seeds.format_table(rows, quickstart_seeds.summary(rows), quickstart_seeds.real_row(judged))
    assert table.splitlines()[-1] == "| real held-out images |  |  |  |  |  |  | 90.0 |  | 0.990 |  |  |"


def bench(tmp_path: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "bench.quickstart_seeds", "--seeds", "0,1", "--threads", "1", "--skip-mnist",
        "--runs", str(tmp_path / "runs"), "--output", str(tmp_path / "out.json"), *[f"--set={item}" for item in TINY],
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_two_seeds_end_to_end_in_fp32_and_finished_runs_are_reused(tmp_path):
    first = bench(tmp_path)
    assert first.returncode == 0, first.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert [(row["seed"], row["steps"]) for row in result["runs"]] == [(0, 4), (1, 4)]
    assert all(row["wall_seconds"] > 0 and 0 <= row["probe"] <= 100 for row in result["runs"])
    assert result["machine"]["cpu_capability"] and "cpu" in result["machine"]
    resolved = (tmp_path / "runs" / "seed1" / "recipe.toml").read_text()
    assert 'precision = "fp32"' in resolved and "seed = 1" in resolved
    again = bench(tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("reusing") == 2
    first_seconds = result["runs"][0]["wall_seconds"]
    assert json.loads((tmp_path / "out.json").read_text())["runs"][0]["wall_seconds"] == pytest.approx(first_seconds, abs=0.05)


def test_final_values_merge_everything_at_the_last_step_the_latest_record_winning(tmp_path):
    records = [
        {"step": 50, "metric": "judge", "judge_recognisable": 0.1},
        {"step": 100, "metric": "judge", "judge_recognisable": 0.2, "judge_fd": 9.0, "settings": {}},
        {"step": 100, "metric": "report", "probe_top1": 0.4, "judge_recognisable": 0.3},
        {"step": 100, "metric": "judge", "judge_recognisable": 0.5},  # a later `bifamily eval`
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert final_values(tmp_path) == {"step": 100, "probe_top1": 0.4, "judge_recognisable": 0.5, "judge_fd": 9.0}
    assert final_values(tmp_path / "missing") is None
