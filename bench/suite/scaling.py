"""Step time against batch size (at 32x32) and against resolution (32, 64, 128), drawn as one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
from matplotlib import ticker  # noqa: E402

from .configs import Effort  # noqa: E402

BATCH_SWEEP_RESOLUTION = 32


@attrs.frozen
class ScalingPoint:
    """One configuration of the sweep: ``axis`` is the quantity that varies along its curve."""

    axis: str  # "batch_size" or "resolution"
    mode: str
    batch_size: int
    resolution: int

    def overrides(self) -> tuple[str, ...]:
        return (f"train.batch_size={self.batch_size}", f"data.resolution={self.resolution}")


def sweep(effort: Effort, modes: tuple[str, ...]) -> list[ScalingPoint]:
    points = [
        ScalingPoint("batch_size", mode, batch, BATCH_SWEEP_RESOLUTION)
        for mode in modes
        for batch in effort.scaling_batches
    ]
    points += [
        ScalingPoint("resolution", mode, effort.scaling_batch_at_resolution, side)
        for mode in modes
        for side in effort.scaling_resolutions
    ]
    return points


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """Two panels, step seconds against batch size and against resolution (log2 axes), one line per mode.

    ``rows`` are measured points (``axis``, ``mode``, ``batch_size``, ``resolution``,
    ``step_seconds``); points that failed (no ``step_seconds``) are left out.
    """
    figure, panels = plt.subplots(1, 2, figsize=(10, 4))
    for panel, axis, label in (
        (panels[0], "batch_size", f"batch size (at {BATCH_SWEEP_RESOLUTION}x{BATCH_SWEEP_RESOLUTION})"),
        (panels[1], "resolution", "resolution (side in pixels)"),
    ):
        measured = [row for row in rows if row["axis"] == axis and "step_seconds" in row]
        for mode in dict.fromkeys(row["mode"] for row in measured):
            line = sorted((row[axis], row["step_seconds"]) for row in measured if row["mode"] == mode)
            panel.plot([x for x, _ in line], [y for _, y in line], marker="o", label=mode)
        if axis == "resolution" and measured:
            panel.set_title(f"batch size {measured[0]['batch_size']}", fontsize="medium")
        panel.set_xscale("log", base=2)
        panel.set_xticks(sorted({row[axis] for row in measured}))
        panel.xaxis.set_major_formatter(ticker.ScalarFormatter())
        panel.xaxis.set_minor_locator(ticker.NullLocator())
        panel.set_ylim(bottom=0)
        panel.set_xlabel(label)
        panel.set_ylabel("median step time (s)")
        panel.grid(True, which="both", alpha=0.3)
        panel.legend()
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
