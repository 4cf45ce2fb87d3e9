"""TensorBoard event files for a run with ``run.tensorboard = true``: the losses and images/s of
stats.jsonl (``train/...``), every metric value (``METRIC/VALUE``, the end-of-run report as
``report/...``) and every sample, reconstruction and evaluation grid, in RUN_DIR/tensorboard/.

Written through ``torch.utils.tensorboard``, which needs the optional ``tensorboard`` package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bifamily.grids import grid_picture
from bifamily.rundir import STATS_FILE

_NOT_SCALARS = ("step", "metric", "settings")


def missing_package_problems() -> list[str]:
    """The recipe problem of ``run.tensorboard = true`` where ``torch.utils.tensorboard`` cannot load."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        return [f"$.run.tensorboard: needs the tensorboard package, which cannot be imported ({exc}); "
                "install it with: pip install tensorboard"]
    return []


class TensorBoardEvents:
    """A :class:`~bifamily.rundir.RunListener` that mirrors a run writer's records and grids into
    TensorBoard event files under ``folder``.

    A run writes in step order, except where it goes back to a checkpoint: when resumed, or after a
    guard rollback. Then the run's JSON-lines logs drop what came after the checkpoint; here a new
    event file starts with ``purge_step`` at the first step written again, which makes TensorBoard
    hide the events of the abandoned steps.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.writer: Any = None  # a SummaryWriter, opened at the first step
        self.last_step = -1

    def appended(self, name: str, record: dict[str, Any]) -> None:
        group = "train" if name == STATS_FILE else record.get("metric")
        if group is None:
            return
        step = int(record["step"])
        writer = self._writer_at(step)
        for key, value in record.items():
            if key not in _NOT_SCALARS and _is_number(value):
                writer.add_scalar(f"{group}/{key}", float(value), step)

    def saved_grid(self, folder: str, step: int, images: torch.Tensor, nrow: int) -> None:
        self._writer_at(step).add_image(folder, grid_picture(images, nrow), step)

    def _writer_at(self, step: int) -> Any:
        if self.writer is None or step < self.last_step:
            from torch.utils.tensorboard import SummaryWriter

            self.close()
            self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=step)
        self.last_step = step
        return self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)
