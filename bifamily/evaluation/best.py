"""The best snapshot of a run by one metric value: ``RUN_DIR/best/snapshot.safetensors``.

The paper early-stops on linear-probe accuracy; a run with ``[eval] best = "probe_top1"`` keeps the
snapshot (all weights, EMA included, and the recipe) of the step where that value was best so far,
with the value in its metadata. It is written atomically (temporary file, then rename), so the file is
always a whole snapshot. Only a strictly better value replaces it (the earlier of equal ones stays).
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from bifamily.checkpoint import SNAPSHOT_FILE, read_snapshot, save_snapshot
from bifamily.errors import CheckpointError

BEST_DIR = "best"


class BestSnapshot:
    """Keeps the snapshot with the best ``value_name`` (``direction`` "max" or "min") seen so far."""

    def __init__(self, run_dir: Path, value_name: str, direction: str, resumed_step: int | None = None):
        self.path = Path(run_dir) / BEST_DIR / SNAPSHOT_FILE
        self.value_name = value_name
        self.direction = direction
        self.value: float | None = None
        if resumed_step is not None:
            self._adopt_existing(resumed_step)

    def _adopt_existing(self, resumed_step: int) -> None:
        """Continue from the best of a resumed run; drop it if it belongs to steps after the resume point
        (an abandoned timeline) or to another value."""
        if not self.path.is_file():
            return
        try:
            _, metadata = read_snapshot(self.path)
            step, value = int(metadata["step"]), float(metadata["best_value"])
            same_value = metadata.get("best_value_name") == self.value_name
        except (CheckpointError, KeyError, ValueError):
            step, value, same_value = resumed_step + 1, math.nan, False
        if same_value and step <= resumed_step:
            self.value = value
        else:
            self.path.unlink()

    def is_better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value if self.direction == "max" else value < self.value

    def offer(self, value: float, step: int, modules: dict[str, nn.Module], metadata: dict[str, str]) -> bool:
        """Save the modules as the best snapshot if ``value`` beats the best so far; True if saved."""
        if not self.is_better(value):
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        best = {"step": str(step), "best_value_name": self.value_name, "best_value": repr(float(value))}
        save_snapshot(self.path, modules, {**metadata, **best})
        self.value = value
        return True
