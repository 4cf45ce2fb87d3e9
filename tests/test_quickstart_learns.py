"""The quickstart as shipped learns: its EMA encoder beats its initialisation by 10 probe points.

Slow: the whole recipe, about 4 minutes on 2 cores with bf16 in hardware (about twice that in fp32).
The margin is the issue's target for the shipped recipe and seed; other seeds land elsewhere
(docs/results.md, "The quickstart", has four of them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bifamily.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_quickstart_beats_its_initialisation_by_ten_points(tmp_path):
    out = tmp_path / "run"
    args = ["run", str(REPO / "recipes" / "quickstart.toml"), "--no-progress", "--out", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (report,) = [record for record in records if record["metric"] == "report"]
    assert report["step"] == 1400
    assert report["probe_top1"] - report["probe_top1_init"] >= 0.10, report
    assert report["knn_top1"] > report["knn_top1_init"], report
    assert (out / "samples" / "step-00001400.png").exists()
    assert (out / "reconstructions" / "step-00001400.png").exists()
