"""Run directories describe themselves: resolved recipe, stats, metrics, grids and checkpoints.

Layout::

    runs/00003-quickstart/
        recipe.toml          the resolved recipe (every default filled in)
        log.txt              what the run printed: progress lines, warnings, results (appended on resume)
        stats.jsonl          one JSON object per logged step
        metrics.jsonl        evaluation results (step, metric, value, settings)
        samples/             EMA-generator samples on a fixed latent batch, PNG
        reconstructions/     inputs above G(E(x)) with the EMA weights, PNG
        checkpoints/         safetensors snapshot + resume state, `latest` pointer
        tensorboard/         TensorBoard event files, with `run.tensorboard = true`

Rank 0's :class:`RunWriter` tells its :class:`RunListener` objects about every record and grid it
writes; that is how the progress lines and the TensorBoard events follow the run.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Protocol

import tomli_w
import torch

from bifamily.errors import BifamilyError
from bifamily.grids import write_grid

_NUMBERED = re.compile(r"^(\d{5})-(.+)$")


def new_run_dir(root: Path, name: str) -> Path:
    """The next numbered directory ``root/NNNNN-name`` (not created yet)."""
    numbers = [int(m.group(1)) for p in root.glob("*") if (m := _NUMBERED.match(p.name))]
    return root / f"{max(numbers, default=-1) + 1:05d}-{name}"


def latest_run_dir(root: Path, name: str) -> Path | None:
    """The highest-numbered ``root/NNNNN-name`` that holds a checkpoint, for ``--resume``."""
    candidates = sorted(
        (
            p
            for p in (root.iterdir() if root.is_dir() else ())
            if (m := _NUMBERED.match(p.name)) and m.group(2) == name and (p / "checkpoints").is_dir()
        ),
        key=lambda p: p.name,
    )
    return candidates[-1] if candidates else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep it visible
    return value


class RunListener(Protocol):
    """Told about each record and grid a :class:`RunWriter` writes (after it is on disk)."""

    def appended(self, name: str, record: dict[str, Any]) -> None:
        """``record`` was appended to the JSON-lines file ``name`` (stats.jsonl, metrics.jsonl)."""

    def saved_grid(self, folder: str, step: int, images: torch.Tensor, nrow: int) -> None:
        """A grid of ``images`` (NCHW in [-1, 1]) was saved under ``folder`` for ``step``."""


class RunWriter:
    """Writes a run directory's files. Only the process that owns the directory (rank 0) makes one."""

    def __init__(self, path: Path):
        self.path = path
        self.listeners: list[RunListener] = []

    def create(self, recipe_dict: dict[str, Any]) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BifamilyError(f"cannot create run directory {self.path}: {exc.strerror}") from None
        (self.path / "recipe.toml").write_text(tomli_w.dumps(recipe_dict), encoding="utf-8")

    def truncate_after(self, step: int) -> None:
        """Drop log lines written after ``step`` by a run that crashed before its next checkpoint."""
        for name in ("stats.jsonl", "metrics.jsonl"):
            path = self.path / name
            if not path.exists():
                continue
            kept = [
                line
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _line_step(line) <= step
            ]
            # Write aside and rename, so a kill at this moment leaves the old log, never half of it.
            temporary = path.with_name(f".{name}.tmp")
            temporary.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
            os.replace(temporary, path)

    def append(self, name: str, record: dict[str, Any]) -> None:
        line = json.dumps({key: _jsonable(value) for key, value in record.items()})
        with open(self.path / name, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        for listener in self.listeners:
            listener.appended(name, record)

    def save_grid(self, folder: str, step: int, images: torch.Tensor, nrow: int) -> Path:
        out = self.path / folder / f"step-{step:08d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_grid(out, images, nrow)
        for listener in self.listeners:
            listener.saved_grid(folder, step, images, nrow)
        return out


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, TypeError, AttributeError, RecursionError):  # not a record bifamily wrote
        return 0
