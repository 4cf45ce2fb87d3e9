"""The best snapshot of a run by one metric value: ``RUN_DIR/best/snapshot.safetensors``.

The paper early-stops on linear-probe accuracy; a run with ``[eval] best = "probe_top1"`` keeps the
snapshot (all weights, EMA included, and the recipe) of the step where that value was best so far,
with the value in its metadata. It is written atomically (temporary file, then rename), so the file is
always a whole snapshot. Only a strictly better value replaces it (the earlier of equal ones stays).

A run can go back in time: ``--resume`` from an older checkpoint, or a divergence guard rollback to
the latest checkpoint. A best taken after that point belongs to an abandoned timeline, so
``best/committed.safetensors`` keeps the best as of the latest checkpoint whenever a newer best would
replace it, and :meth:`BestSnapshot.rewind` puts it back.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from torch import nn

from bifamily.checkpoint.snapshot import SNAPSHOT_FILE, read_snapshot, save_snapshot
from bifamily.errors import CheckpointError
from bifamily.rundir import RunDir

COMMITTED_FILE = "committed.safetensors"


class BestSnapshot:
    """Keeps the snapshot with the best ``value_name`` (``direction`` "max" or "min") seen so far."""

    def __init__(self, run_dir: Path, value_name: str, direction: str, resumed_step: int | None = None):
        self.path = RunDir(run_dir).best / SNAPSHOT_FILE
        self.committed_path = self.path.parent / COMMITTED_FILE
        self.value_name = value_name
        self.direction = direction
        self.value: float | None = None
        if resumed_step is None:
            self._remove(self.committed_path)
        else:
            self.rewind(resumed_step)

    def is_better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value if self.direction == "max" else value < self.value

    def offer(
        self,
        value: float,
        step: int,
        modules: dict[str, nn.Module],
        metadata: dict[str, str],
        checkpointed_step: int = -1,
    ) -> bool:
        """Save the modules as the best snapshot if ``value`` beats the best so far; True if saved.

        ``checkpointed_step`` is the step of the latest checkpoint: a best at or before it is one a
        rollback cannot abandon, so it is kept as the committed best before being replaced.
        """
        if not self.is_better(value):
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        current = self._read(self.path)
        if current is not None and current[0] <= checkpointed_step:
            os.replace(self.path, self.committed_path)
        best = {"step": str(step), "best_value_name": self.value_name, "best_value": repr(float(value))}
        save_snapshot(self.path, modules, {**metadata, **best})
        self.value = value
        return True

    def rewind(self, step: int) -> None:
        """Forget the bests taken after ``step`` (the run went back to it): the current best if it is
        newer, then the committed one if that is newer too or belongs to another value."""
        for path in (self.path, self.committed_path):
            found = self._read(path)
            if found is not None and found[0] <= step:
                if path != self.path:
                    os.replace(path, self.path)
                self.value = found[1]
                return
            self._remove(path)
        self.value = None

    def _read(self, path: Path) -> tuple[int, float] | None:
        """(step, value) of a best file of this value; None when missing, unreadable or another value's."""
        if not path.is_file():
            return None
        try:
            _, metadata = read_snapshot(path)
            if metadata.get("best_value_name") != self.value_name:
                return None
            return int(metadata["step"]), float(metadata["best_value"])
        except (CheckpointError, KeyError, ValueError):
            return None

    @staticmethod
    def _remove(path: Path) -> None:
        path.unlink(missing_ok=True)
