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
