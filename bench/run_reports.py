"""Training a recipe's run as a user would and reading its end-of-run report, for the bench modules
that train recipes over seeds."""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WALL_TIME_FILE = "bench_wall_seconds.txt"  # written into a run folder by train_run


def train_run(command: list[str], folder: Path, threads: int) -> float | None:
    """Run ``command`` (``bifamily run ... --out folder``) with ``threads`` torch threads unless
    ``folder`` holds a finished run already: its wall-clock seconds end to end, those measured when it
    was trained for a reused run (None if that is unknown)."""
    if read_report(folder) is not None:
        print(f"reusing {folder}", flush=True)
        recorded = folder / WALL_TIME_FILE
        return float(recorded.read_text()) if recorded.is_file() else None
    if folder.exists():
        raise SystemExit(f"error: {folder} exists without an end-of-run report: remove it to train it again")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "bifamily", *command[1:]], cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: {shlex.join(command)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    seconds = time.perf_counter() - start
    (folder / WALL_TIME_FILE).write_text(f"{seconds:.1f}\n")
    print(f"trained {folder} in {seconds:.0f} s end to end", flush=True)
    return seconds


def read_report(folder: Path) -> dict[str, Any] | None:
    """The run's end-of-run report record from its metrics.jsonl, or None when the run has not finished."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return next((r for r in reversed(records) if r.get("metric") == "report"), None)


def final_values(folder: Path) -> dict[str, Any] | None:
    """Every value recorded at the run's last step, the end-of-run report's and the metrics' scheduled
    then or added later by `bifamily eval`, a later record's value winning; None when the run has not
    finished."""
    report = read_report(folder)
    if report is None:
        return None
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    merged: dict[str, Any] = {"step": report["step"]}
    for record in records:
        if record.get("step") == report["step"]:
            merged.update({key: value for key, value in record.items() if key not in ("step", "metric", "settings")})
    return merged


def row_of(report: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    """One seed's figures in percent (probe, k-NN, recognisability) from its end-of-run report."""
    row: dict[str, Any] = {"wall_seconds": seconds}
    for key, name in (("probe", "probe_top1"), ("knn", "knn_top1")):
        row[f"{key}_init"] = 100 * report[f"{name}_init"]
        row[key] = 100 * report[name]
    row["probe_gain"] = row["probe"] - row["probe_init"]
    if "judge_recognisable" in report:
        row["recognisable"] = 100 * report["judge_recognisable"]
        row["recognisable_ratio"] = report["judge_recognisable_ratio"]
        row["coverage"] = report["judge_coverage"]
        row["fd"] = report["judge_fd"]
        row["kid"] = report["judge_kid"]
    return row


def mean_sd(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation of one figure over seeds (sd 0 for a single seed)."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
