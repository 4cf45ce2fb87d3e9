"""Reading a finished run's end-of-run report, for the bench scripts that train recipes over seeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
