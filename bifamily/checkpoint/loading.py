"""A trained model from a path a user gives: a snapshot file, a checkpoint folder, RUN_DIR/best, or a run
directory (its latest whole checkpoint) -- what ``bifamily eval``, ``sample``, ``reconstruct``, ``plot``
and ``export`` open."""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

from bifamily.build import Model
from bifamily.checkpoint.manager import CheckpointManager
from bifamily.checkpoint.snapshot import SNAPSHOT_FILE, rebuild_model
from bifamily.errors import CheckpointError
from bifamily.plugins import PluginSet
from bifamily.recipe import Recipe
from bifamily.rundir import RunDir


@attrs.frozen
class LoadedSnapshot:
    path: Path
    run_dir: Path | None  # the run directory the snapshot belongs to, when it is inside one
    recipe: Recipe
    model: Model  # generator and encoder hold the EMA weights; every module in eval mode
    step: int


def find_snapshot(target: Path) -> tuple[Path, Path | None]:
    """The snapshot file ``target`` names, and the run directory holding it (None outside one)."""
    target = Path(target)
    run = RunDir(target)
    if target.is_file():
        snapshot = target
    elif (target / SNAPSHOT_FILE).is_file():
        snapshot = target / SNAPSHOT_FILE
    elif run.is_run_dir():
        latest = CheckpointManager(run.checkpoints).latest()
        if latest is None:
            raise CheckpointError(f"{target}: the run has no complete checkpoint in {run.checkpoints}")
        snapshot = latest / SNAPSHOT_FILE
    else:
        raise CheckpointError(
            f"{target}: not a snapshot file, a folder holding {SNAPSHOT_FILE}, or a run directory"
        )
    run_dir = next((folder for folder in list(snapshot.parents)[:3] if RunDir(folder).is_run_dir()), None)
    return snapshot, run_dir


def load_snapshot(
    target: str | Path, plugins: PluginSet, overrides: list[str] = (), device: torch.device | str = "cpu"
) -> LoadedSnapshot:
    """Rebuild the snapshot's model on ``device`` with its EMA generator and encoder weights."""
    path, run_dir = find_snapshot(Path(target))
    model, recipe, step = rebuild_model(path, plugins, overrides, device)
    for module in model.modules().values():
        module.to(device).eval()
    return LoadedSnapshot(path, run_dir, recipe, model, step)
