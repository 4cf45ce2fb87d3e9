"""Run directories describe themselves: resolved recipe, stats, metrics, grids and checkpoints.

:class:`RunDir` is the layout: every file and folder name below is spelled in this module only.

Layout::

    runs/00003-quickstart/
        recipe.toml          the resolved recipe (every default filled in)
        log.txt              what the run printed: progress lines, warnings, results (appended on resume)
        stats.jsonl          one JSON object per logged step
        metrics.jsonl        evaluation results (step, metric, value, settings)
        samples/             EMA-generator samples on a fixed latent batch, PNG
        reconstructions/     inputs above G(E(x)) with the EMA weights, PNG
        eval/METRIC-IMAGE/   grids a metric draws
        checkpoints/         step-NNNNNNNN/ folders (safetensors snapshot + resume state), `latest` pointer
        best/                the best snapshot by `eval.best`
        tensorboard/         TensorBoard event files, with `run.tensorboard = true`
        plots/               `bifamily plot`'s pictures, by default

Grids are PNG files named by step, ``step-NNNNNNNN.png``, as checkpoint folders are.

Rank 0's :class:`RunWriter` tells its :class:`RunListener` objects about every record and grid it
writes; that is how the progress lines and the TensorBoard events follow the run.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import tomli_w

from bifamily.errors import BifamilyError

if TYPE_CHECKING:
    import torch

_NUMBERED = re.compile(r"^(\d{5})-(.+)$")

RECIPE_FILE = "recipe.toml"
LOG_FILE = "log.txt"
STATS_FILE = "stats.jsonl"
METRICS_FILE = "metrics.jsonl"
SAMPLES = "samples"
RECONSTRUCTIONS = "reconstructions"
EVAL_GRIDS = "eval"
CHECKPOINTS = "checkpoints"
POINTER_FILE = "latest"  # in the checkpoints folder: the name of the checkpoint to resume from
BEST = "best"
TENSORBOARD = "tensorboard"
PLOTS = "plots"
STEP_PREFIX = "step-"
STEP_NAME = re.compile(r"step-(\d{8,})")  # a checkpoint folder, or a grid's file name before .png


def step_name(step: int) -> str:
    """``step-NNNNNNNN``: the checkpoint folder of ``step``, and its grids' name (with .png)."""
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    return f"{STEP_PREFIX}{step:08d}"


@attrs.frozen
class RunDir:
    """The paths of a run directory's files and folders."""

    path: Path = attrs.field(converter=Path)

    @property
    def recipe(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def log(self) -> Path:
        return self.path / LOG_FILE

    @property
    def stats(self) -> Path:
        return self.path / STATS_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def pointer(self) -> Path:
        return self.checkpoints / POINTER_FILE

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def plots(self) -> Path:
        return self.path / PLOTS

    def grid(self, folder: str, step: int) -> Path:
        """The PNG of the grid saved under ``folder`` (SAMPLES, RECONSTRUCTIONS, EVAL_GRIDS/...) at ``step``."""
        return self.path / folder / f"{step_name(step)}.png"

    def is_run_dir(self) -> bool:
        """Whether the folder is a run directory: a recipe and a checkpoints folder."""
        return self.recipe.is_file() and self.checkpoints.is_dir()

    def has_checkpoint(self) -> bool:
        """Whether the checkpoints folder holds anything (whole or not)."""
        return self.checkpoints.is_dir() and any(self.checkpoints.iterdir())

    def step_entries(self) -> list[Path]:
        """Everything in the checkpoints folder named like a checkpoint, damaged or not, in step order."""
        return sorted(self.checkpoints.glob(f"{STEP_PREFIX}*"))


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
            if (m := _NUMBERED.match(p.name)) and m.group(2) == name and RunDir(p).checkpoints.is_dir()
        ),
        key=lambda p: p.name,
    )
    return candidates[-1] if candidates else None


def _jsonable(value: Any) -> Any:
    import torch  # here, so that the layout names cost no torch import (the log module reads them)

    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep it visible
    return value


class RunListener(Protocol):
    """Told about each record and grid a :class:`RunWriter` writes (after it is on disk)."""

    def appended(self, name: str, record: dict[str, Any]) -> None:
        """``record`` was appended to the JSON-lines file ``name`` (STATS_FILE, METRICS_FILE)."""

    def saved_grid(self, folder: str, step: int, images: torch.Tensor, nrow: int) -> None:
        """A grid of ``images`` (NCHW in [-1, 1]) was saved under ``folder`` for ``step``."""


class RunWriter:
    """Writes a run directory's files. Only the process that owns the directory (rank 0) makes one."""

    def __init__(self, path: Path):
        self.path = path
        self.run_dir = RunDir(path)
        self.listeners: list[RunListener] = []

    def create(self, recipe_dict: dict[str, Any]) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BifamilyError(f"cannot create run directory {self.path}: {exc.strerror}") from None
        self.run_dir.recipe.write_text(tomli_w.dumps(recipe_dict), encoding="utf-8")

    def truncate_after(self, step: int) -> None:
        """Drop log lines written after ``step`` by a run that crashed before its next checkpoint."""
        for name in (STATS_FILE, METRICS_FILE):
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
        from bifamily.grids import write_grid

        out = self.run_dir.grid(folder, step)
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
