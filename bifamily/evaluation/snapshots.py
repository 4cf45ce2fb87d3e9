"""Rebuild a model from a snapshot file alone: its metadata holds the resolved recipe.

``bifamily eval``, ``sample``, ``reconstruct`` and ``plot`` accept a snapshot file, a checkpoint folder,
``RUN_DIR/best`` or a run directory (its latest checkpoint). The generator and encoder get the EMA
weights, which every evaluation uses. ``--set`` overrides apply to the stored recipe first (data paths
of the machine that trained may not exist here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from bifamily.build import Model, build_model, make_context
from bifamily.checkpoint.manager import CheckpointManager
from bifamily.checkpoint.snapshot import SNAPSHOT_FILE, load_modules, metadata_json, read_snapshot
from bifamily.errors import CheckpointError
from bifamily.plugins import PluginSet
from bifamily.recipe import TOO_DEEP, Recipe, apply_overrides, from_dict, too_deep


@attrs.frozen
class LoadedSnapshot:
    path: Path
    run_dir: Path | None  # the run directory the snapshot belongs to, when it is inside one
    recipe: Recipe
    model: Model  # generator and encoder hold the EMA weights; every module in eval mode
    step: int


def is_run_dir(path: Path) -> bool:
    return (path / "recipe.toml").is_file() and (path / "checkpoints").is_dir()


def find_snapshot(target: Path) -> tuple[Path, Path | None]:
    """The snapshot file ``target`` names, and the run directory holding it (None outside one)."""
    target = Path(target)
    if target.is_file():
        snapshot = target
    elif (target / SNAPSHOT_FILE).is_file():
        snapshot = target / SNAPSHOT_FILE
    elif is_run_dir(target):
        latest = CheckpointManager(target / "checkpoints").latest()
        if latest is None:
            raise CheckpointError(f"{target}: the run has no complete checkpoint in {target / 'checkpoints'}")
        snapshot = latest / SNAPSHOT_FILE
    else:
        raise CheckpointError(
            f"{target}: not a snapshot file, a folder holding {SNAPSHOT_FILE}, or a run directory"
        )
    run_dir = next((folder for folder in list(snapshot.parents)[:3] if is_run_dir(folder)), None)
    return snapshot, run_dir


def read_model_snapshot(path: Path, what: str = "model") -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    """The tensors, the stored recipe (raw data, to structure with overrides) and the step of a snapshot
    file, each checked: ``what`` names what is rebuilt from it in the error."""
    tensors, metadata = read_snapshot(path)
    if "recipe" not in metadata:
        raise CheckpointError(f"{path}: its metadata holds no recipe, so the {what} cannot be rebuilt from it")
    raw = metadata_json(path, metadata, "recipe", dict)
    if too_deep(raw):
        raise CheckpointError(f"{path}: the recipe in its metadata has {TOO_DEEP}")
    return tensors, raw, metadata_json(path, metadata, "step", int, default=0)


def load_snapshot(
    target: str | Path, plugins: PluginSet, overrides: list[str] = (), device: torch.device | str = "cpu"
) -> LoadedSnapshot:
    """Rebuild the snapshot's model on ``device`` with its EMA generator and encoder weights."""
    path, run_dir = find_snapshot(Path(target))
    tensors, raw, step = read_model_snapshot(path)
    recipe = from_dict(apply_overrides(raw, list(overrides)), plugins, source=str(path))
    model = build_model(recipe, make_context(recipe, device))
    load_modules(tensors, {"generator_ema": model.generator, "encoder_ema": model.encoder}, path)
    for module in model.modules().values():
        module.to(device).eval()
    return LoadedSnapshot(path, run_dir, recipe, model, step)
