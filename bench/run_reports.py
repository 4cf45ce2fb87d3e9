"""Training a recipe's run as a user would and reading its end-of-run report, for the bench scripts
that train recipes over seeds."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def train_run(command: list[str], folder: Path, threads: int) -> float | None:
    """Run ``command`` (``bifamily run ... --out folder``) with ``threads`` torch threads unless
    ``folder`` holds a finished run already; its wall-clock seconds, None when the run is reused."""
    if read_report(folder) is not None:
        print(f"reusing {folder}", flush=True)
        return None
    if folder.exists():
        raise SystemExit(f"error: {folder} exists without an end-of-run report: remove it to train it again")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "bifamily", *command[1:]], cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: {shlex.join(command)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    seconds = time.perf_counter() - start
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
