"""Resume state: what a checkpoint holds beside its snapshot so training continues exactly.

``resume.safetensors`` holds the optimizer states (flattened to tensors plus a JSON layout, parameters
identified by position), the step, the trainer's JSON-able ``extra`` dict, and the checksum of the
snapshot it belongs to, so a mixed-up pair is refused. It holds no RNG states: the trainer re-seeds
every random stream from (seed, step) at the start of each step (:mod:`bifamily.randomness`), so a
restored state would be overwritten before its first use. (Files written before kept them; they are
ignored.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bifamily.checkpoint import files
from bifamily.checkpoint.snapshot import (
    SNAPSHOT_FILE,
    SNAPSHOT_FORMAT,
    apply_modules,
    listing,
    metadata_json,
    module_differences,
    refuse_nonfinite,
)
from bifamily.errors import CheckpointError

RESUME_FILE = "resume.safetensors"
RESUME_FORMAT = "bifamily.resume/1"


def read_pair(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    """Snapshot tensors, resume tensors and resume metadata of a checkpoint folder, all verified."""
    snapshot, snapshot_metadata = files.read_file(folder / SNAPSHOT_FILE, SNAPSHOT_FORMAT)
    resume, resume_metadata = files.read_file(folder / RESUME_FILE, RESUME_FORMAT)
    if resume_metadata.get("snapshot_sha256") != snapshot_metadata["sha256"]:
        raise CheckpointError(f"{folder / RESUME_FILE}: belongs to a different snapshot than {folder / SNAPSHOT_FILE}")
    return snapshot, resume, resume_metadata


def restore(
    checkpoint_dir: Path,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
) -> tuple[int, dict]:
    """Load a checkpoint folder into modules and optimizers; returns ``(step, extra)``.

    Everything is read and checked before anything is changed, so a refused checkpoint leaves the
    objects untouched.
    """
    checkpoint_dir = Path(checkpoint_dir)
    snapshot, resume, resume_metadata = read_pair(checkpoint_dir)
    differences = module_differences(snapshot, modules)
    if differences:
        headline = f"{checkpoint_dir / SNAPSHOT_FILE}: the weights do not match the model"
        raise CheckpointError(listing(headline, differences))
    refuse_nonfinite(snapshot, modules, checkpoint_dir / SNAPSHOT_FILE)
    resume_path = checkpoint_dir / RESUME_FILE
    step = metadata_json(resume_path, resume_metadata, "step", int)
    extra = metadata_json(resume_path, resume_metadata, "extra", dict)
    layouts = metadata_json(resume_path, resume_metadata, "optimizers", dict)
    try:  # the layouts' inner shape is checked as it is decoded
        optimizer_states = _optimizer_states(resume_path, resume, layouts, optimizers)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise CheckpointError(f"{resume_path}: malformed resume metadata ({type(error).__name__}: {error})") from None

    apply_modules(snapshot, modules)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(optimizer_states[name])
    return step, extra


def resume_payload(
    step: int,
    optimizers: Mapping[str, torch.optim.Optimizer],
    extra: dict,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a resume file (its ``snapshot_sha256`` is the caller's to add)."""
    tensors: dict[str, torch.Tensor] = {}
    layouts = {}
    for name, optimizer in optimizers.items():
        files.check_name("optimizer", name)
        layouts[name] = _flatten_optimizer(name, optimizer, tensors)
    try:
        extra_json = json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint extra must be plain JSON: {error}") from None
    metadata = {
        "format": RESUME_FORMAT,
        "step": str(int(step)),
        "extra": extra_json,
        "optimizers": json.dumps(layouts),
    }
    return files.storable(tensors), metadata


def _flatten_optimizer(name: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> dict:
    """An optimizer state dict as tensors (added to ``tensors``) and a JSON-able layout.

    Parameters are identified by position (torch numbers them in group order), so the state maps
    onto whatever parameters the restoring optimizer holds, provided count and shapes agree.
    """
    state_dict = optimizer.state_dict()
    params = [param for group in optimizer.param_groups for param in group["params"]]
    position = {index: p for p, index in enumerate(i for group in state_dict["param_groups"] for i in group["params"])}
    groups = []
    for g, group in enumerate(state_dict["param_groups"]):
        entries = {key: value for key, value in group.items() if key != "params"}
        groups.append(_encode_entries(entries, f"optim.{name}.group.{g}", tensors))
    state = {}
    for index, entries in state_dict["state"].items():
        p = position[index]
        state[str(p)] = _encode_entries(entries, f"optim.{name}.state.{p}", tensors)
    return {
        "group_sizes": [len(group["params"]) for group in state_dict["param_groups"]],
        "param_shapes": [list(param.shape) for param in params],
        "groups": groups,
        "state": state,
    }


def _encode_entries(entries: Mapping[str, Any], prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    """Tensor entries go to ``tensors`` under ``prefix.key`` and leave a reference; the rest is JSON."""
    encoded = {}
    for key, value in entries.items():
        if isinstance(value, torch.Tensor):
            tensors[f"{prefix}.{key}"] = value
            encoded[key] = {"__tensor__": f"{prefix}.{key}"}
        else:
            encoded[key] = _encode_json(value, f"{prefix}.{key}")
    return encoded


def _encode_json(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_json(item, where) for item in value]}
    if isinstance(value, list):
        return [_encode_json(item, where) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _encode_json(item, where) for key, item in value.items()}
    raise ValueError(f"{where}: cannot store a {type(value).__name__} in a checkpoint")


def _decode_entries(entries: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], path: Path) -> dict:
    decoded = {}
    for key, value in entries.items():
        if isinstance(value, dict) and "__tensor__" in value:
            if value["__tensor__"] not in tensors:
                raise CheckpointError(f"{path}: tensor {value['__tensor__']} is missing")
            decoded[key] = tensors[value["__tensor__"]]
        else:
            decoded[key] = _decode_json(value)
    return decoded


def _decode_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode_json(item) for item in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(_decode_json(item) for item in value["__tuple__"])
        return {key: _decode_json(item) for key, item in value.items()}
    return value


def _optimizer_states(
    path: Path, tensors: Mapping[str, torch.Tensor], layouts: dict, optimizers: Mapping[str, torch.optim.Optimizer]
) -> dict[str, dict]:
    """Rebuild torch state dicts, after checking each layout against the optimizer it goes into."""
    if set(layouts) != set(optimizers):
        raise CheckpointError(
            f"{path}: holds optimizers {sorted(layouts)}, the model has {sorted(optimizers)}"
        )
    states = {}
    for name, optimizer in optimizers.items():
        layout = layouts[name]
        sizes = [len(group["params"]) for group in optimizer.param_groups]
        shapes = [list(param.shape) for group in optimizer.param_groups for param in group["params"]]
        problem = None
        if layout["group_sizes"] != sizes:
            problem = f"parameters per group {layout['group_sizes']} in the checkpoint, {sizes} in the model"
        else:
            mismatched = [p for p, (a, b) in enumerate(zip(layout["param_shapes"], shapes)) if a != b]
            if mismatched:
                p = mismatched[0]
                problem = (
                    f"parameter {p} has shape {layout['param_shapes'][p]} in the checkpoint, {shapes[p]} in the model"
                    + (f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else "")
                )
        if problem:
            raise CheckpointError(f"{path}: optimizer {name!r} does not match: {problem}")
        groups, start = [], 0
        for group, size in zip(layout["groups"], sizes):
            groups.append({**_decode_entries(group, tensors, path), "params": list(range(start, start + size))})
            start += size
        state = {int(p): _decode_entries(entries, tensors, path) for p, entries in layout["state"].items()}
        states[name] = {"state": state, "param_groups": groups}
    return states
