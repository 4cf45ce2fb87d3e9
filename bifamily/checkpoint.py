"""Checkpoints in safetensors: a portable snapshot of the weights, and the state needed to resume.

A checkpoint is a folder ``step-NNNNNNNN`` holding two files:

- ``snapshot.safetensors``: the weights (parameters and buffers) of named modules, tensor names
  ``<module>.<state_dict key>``, plus the caller's str->str metadata (the trainer stores the resolved
  recipe there). This file alone is enough to evaluate or sample; it is what a user shares.
- ``resume.safetensors``: optimizer states, RNG states, the step and a JSON-able ``extra`` dict.

Both carry a sha256 over their tensors and metadata (``metadata["sha256"]``); the resume file also
records the checksum of the snapshot it belongs to, so a mixed-up pair is refused. Nothing is ever
unpickled: safetensors holds only tensors and strings, everything else is JSON.

Crash safety: both files are written into a hidden staging folder beside the checkpoint folder
(``.checkpoints.partial``), fsynced, and the folder is renamed into place; only then does the pointer
file ``latest`` move (written to a temporary name and renamed). A crash at any moment leaves
``latest`` naming a complete checkpoint, and the checkpoint folder holds nothing but complete
checkpoints and the pointer: a run killed while writing its first checkpoint leaves none, so it is
restarted as a new run, not resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from bifamily.errors import CheckpointError

SNAPSHOT_FILE = "snapshot.safetensors"
RESUME_FILE = "resume.safetensors"
POINTER_FILE = "latest"

_SNAPSHOT_FORMAT = "bifamily.snapshot/1"
_RESUME_FORMAT = "bifamily.resume/1"
_RESERVED_KEYS = ("format", "sha256")
_NAME = re.compile(r"[A-Za-z0-9_\-]+")
_STEP_FOLDER = re.compile(r"step-(\d{8,})")
# `latest` names a step folder, or, for the moment a step is saved a second time, a hidden copy of it.
_POINTABLE = re.compile(r"step-\d{8,}|\.step-\d{8,}\.previous")
_MAX_LISTED = 10
_REQUIRED = object()
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


# -- the manager ------------------------------------------------------------------------------------


class CheckpointManager:
    """Writes numbered checkpoints into ``directory``, keeps the newest ``keep``, finds the latest."""

    def __init__(self, directory: Path, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def save(
        self,
        step: int,
        modules: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        metadata: dict[str, str],
        extra: dict,
        generators: Mapping[str, torch.Generator] = {},
    ) -> Path:
        """Write ``step-NNNNNNNN`` atomically, point ``latest`` at it, prune; returns the folder.

        Saving step s also removes folders of steps after s: they belong to a timeline abandoned by
        resuming from an earlier checkpoint, and would otherwise be taken for the newest.
        """
        # Everything that can be refused (names, metadata, extra) is checked before the disk is touched;
        # the `del`s keep one serialized file in memory at a time.
        snapshot_tensors, snapshot_metadata = _snapshot_payload(modules, metadata)
        snapshot_bytes, snapshot_sha = _serialize(snapshot_tensors, snapshot_metadata)
        del snapshot_tensors
        resume_tensors, resume_metadata = _resume_payload(step, optimizers, extra, generators)
        resume_metadata["snapshot_sha256"] = snapshot_sha

        name = _step_folder_name(step)
        final = self.directory / name
        staging = self.staging
        writing = final  # named in the error if the disk fails
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            if staging.exists():
                _remove(staging)
            staging.mkdir()
            writing = staging / SNAPSHOT_FILE
            _write_file(writing, snapshot_bytes)
            del snapshot_bytes
            writing = staging / RESUME_FILE
            _write_file(writing, _serialize(resume_tensors, resume_metadata)[0])
            writing = final
            _fsync_dir(staging)
            self.directory.mkdir(exist_ok=True)
            if final.exists():
                self._clear_existing(final)
            _durable_replace(staging, final)
            writing = self.directory / POINTER_FILE
            self._point_to(name)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise CheckpointError(f"{writing}: cannot write checkpoint: {error.strerror or error}") from error
        try:
            self._prune(step)
        except OSError as error:
            raise CheckpointError(
                f"{error.filename or self.directory}: checkpoint saved, but an old one cannot be removed: "
                f"{error.strerror or error}"
            ) from error
        return final

    @property
    def staging(self) -> Path:
        """Where a checkpoint is assembled before it is renamed into ``directory``."""
        return self.directory.parent / f".{self.directory.name}.partial"

    def latest(self) -> Path | None:
        """The checkpoint to resume from, or None when there is none.

        The folder the pointer names, when it holds anything, even if damaged: loading it then reports
        the damage instead of silently going further back (checkpoints are written atomically, so a
        damaged one is not a crash's doing). Without a usable pointer (a crash between placing a
        folder and moving the pointer; a pointer that is missing, names no folder, a folder outside
        this one or an empty one), the newest step folder whose files pass the full checksum
        verification; a wrong pointer and damaged folders passed over are warned about.
        """
        target = self._pointer_target()
        if target is not None and self._pointer_problem(target) is None:
            return self.directory / target
        for _, folder in sorted(self._step_folders(), reverse=True):
            try:
                _read_pair(folder)
            except CheckpointError as error:
                if any(folder.iterdir()):  # an empty folder is no checkpoint, not a damaged one
                    warnings.warn(f"passing over a damaged checkpoint: {error}", stacklevel=2)
                continue
            if target is not None:
                warnings.warn(
                    f"{self.directory / POINTER_FILE} names {target[:100]!r}, {self._pointer_problem(target)}; "
                    f"using the newest whole checkpoint, {folder.name} (resuming repairs the pointer)",
                    stacklevel=2,
                )
            return folder
        return None

    def repair_pointer(self, folder: Path) -> None:
        """Point ``latest`` at ``folder`` (the checkpoint :meth:`latest` chose) if it names another (atomically)."""
        if self._pointer_target() != folder.name:
            self._point_to(folder.name)

    def _pointer_problem(self, target: str) -> str | None:
        """Why ``latest`` naming ``target`` cannot be used, or None when it can."""
        if not _POINTABLE.fullmatch(target):
            return "which is not a checkpoint folder of this run"
        folder = self.directory / target
        if not folder.is_dir():
            return "which is missing"
        if not any(folder.iterdir()):
            return "which is empty"
        return None

    def latest_step(self) -> int | None:
        """The step of :meth:`latest`, or None when there is no checkpoint."""
        folder = self.latest()
        match = _STEP_FOLDER.search(folder.name) if folder is not None else None
        return int(match.group(1)) if match else None

    def whole_before(self, folder: Path) -> Path | None:
        """When ``folder`` is damaged, the newest earlier checkpoint that verifies (None otherwise)."""
        match = _STEP_FOLDER.fullmatch(Path(folder).name)
        if match is None or _verifies(folder):
            return None
        earlier = [(step, path) for step, path in self._step_folders() if step < int(match.group(1))]
        return next((path for _, path in sorted(earlier, reverse=True) if _verifies(path)), None)

    def _clear_existing(self, final: Path) -> None:
        """Remove an older save of the same step; if ``latest`` names it, repoint to a copy first."""
        if self._pointer_target() == final.name and _looks_complete(final):
            preserved = self.directory / f".{final.name}.previous"
            if preserved.exists():
                _remove(preserved)
            preserved.mkdir()
            for file in (SNAPSHOT_FILE, RESUME_FILE):
                _link_or_copy(final / file, preserved / file)
            _fsync_dir(preserved)
            self._point_to(preserved.name)
        _remove(final)

    def _point_to(self, folder_name: str) -> None:
        temporary = self.directory / f".{POINTER_FILE}.tmp"
        _write_file(temporary, f"{folder_name}\n".encode())
        _durable_replace(temporary, self.directory / POINTER_FILE)

    def _pointer_target(self) -> str | None:
        try:
            return (self.directory / POINTER_FILE).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None

    def _step_folders(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        return [
            (int(match.group(1)), path)
            for path in self.directory.iterdir()
            if (match := _STEP_FOLDER.fullmatch(path.name)) and path.is_dir()
        ]

    def _prune(self, saved_step: int) -> None:
        """Keep the newest ``keep`` complete checkpoints up to ``saved_step``; drop everything else."""
        target = self._pointer_target()
        for path in self.directory.iterdir():
            leftover = path.name.startswith(".step-") or path.name == f".{POINTER_FILE}.tmp"
            if leftover and path.name != target:
                _remove(path)
        kept = 0
        for step, folder in sorted(self._step_folders(), reverse=True):
            complete = (folder / SNAPSHOT_FILE).is_file() and (folder / RESUME_FILE).is_file()
            if folder.name != target and (step > saved_step or not complete or kept >= self.keep):
                _remove(folder)
            else:
                kept += 1


def _step_folder_name(step: int) -> str:
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    return f"step-{step:08d}"


def _verifies(folder: Path) -> bool:
    try:
        _read_pair(folder)
    except CheckpointError:
        return False
    return True


def _looks_complete(folder: Path) -> bool:
    """Both files present and as long as their headers say (cheap; no checksum)."""
    try:
        for file in (SNAPSHOT_FILE, RESUME_FILE):
            _read_header_only(folder / file)
    except CheckpointError:
        return False
    return True


# -- snapshots --------------------------------------------------------------------------------------


def save_snapshot(path: Path, modules: dict[str, nn.Module], metadata: dict[str, str]) -> None:
    """Write the modules' weights and ``metadata`` to ``path`` (atomically, via a temporary name)."""
    path = Path(path)
    data, _ = _serialize(*_snapshot_payload(modules, metadata))
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        _write_file(temporary, data)
        _durable_replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write snapshot: {error.strerror or error}") from error


def read_snapshot(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the caller's metadata of a snapshot file, after verifying its checksum."""
    tensors, metadata = _read_file(Path(path), _SNAPSHOT_FORMAT)
    return tensors, {key: value for key, value in metadata.items() if key not in _RESERVED_KEYS}


def metadata_json(path: Path, metadata: Mapping[str, str], key: str, expected: type, default: Any = _REQUIRED) -> Any:
    """``metadata[key]`` decoded from JSON and checked to be an ``expected`` (dict, list, int, str).

    Every field of a file is untrusted: valid JSON of the wrong type is refused like broken JSON,
    naming the file and the key, so no caller meets a list where it reads a table.
    """
    if key not in metadata:
        if default is _REQUIRED:
            raise CheckpointError(f"{path}: its metadata has no {key!r}")
        return default
    try:
        value = json.loads(metadata[key])
    except (ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({reason})") from None
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise CheckpointError(
            f"{path}: metadata {key!r} must hold a JSON {_JSON_TYPES[expected]}, got {_JSON_TYPES.get(type(value), type(value).__name__)}"
        )
    return value


def load_modules(tensors: Mapping[str, torch.Tensor], modules: Mapping[str, nn.Module], path: Path | None = None) -> None:
    """Load ``<module>.<key>`` tensors (read from ``path``) into the modules, strictly.

    Tensors of modules not named in ``modules`` are ignored (evaluation may load just the EMA
    encoder); for the named ones every name, shape and dtype must match and every value be finite,
    else nothing is loaded.
    """
    differences = _module_differences(tensors, modules)
    if differences:
        where = f"{path}: " if path is not None else ""
        raise CheckpointError(_listing(f"{where}the checkpoint does not match the model", differences))
    _refuse_nonfinite(tensors, modules, path)
    _apply_modules(tensors, modules)


def _snapshot_payload(
    modules: Mapping[str, nn.Module], metadata: Mapping[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"snapshot metadata must map str to str, got {key!r}: {type(value).__name__}")
        if key in _RESERVED_KEYS:
            raise ValueError(f"snapshot metadata key {key!r} is reserved")
    tensors: dict[str, torch.Tensor] = {}
    for module_name, module in modules.items():
        _check_name("module", module_name)
        for key, tensor in module.state_dict().items():
            tensors[f"{module_name}.{key}"] = tensor
    return _storable(tensors), {**metadata, "format": _SNAPSHOT_FORMAT}


def _module_differences(tensors: Mapping[str, torch.Tensor], modules: Mapping[str, nn.Module]) -> list[str]:
    expected = {
        f"{module_name}.{key}": tensor
        for module_name, module in modules.items()
        for key, tensor in module.state_dict().items()
    }
    prefixes = tuple(f"{module_name}." for module_name in modules)
    found = {name: tensor for name, tensor in tensors.items() if name.startswith(prefixes)}
    differences = [(name, f"missing {name} {_describe(expected[name])}") for name in expected if name not in found]
    differences += [(name, f"unexpected {name} {_describe(found[name])}") for name in found if name not in expected]
    for name in expected.keys() & found.keys():
        want, have = expected[name], found[name]
        if want.shape != have.shape:
            line = f"shape of {name}: {list(have.shape)} in the checkpoint, {list(want.shape)} in the model"
            differences.append((name, line))
        elif want.dtype != have.dtype:
            line = f"dtype of {name}: {_dtype(have)} in the checkpoint, {_dtype(want)} in the model"
            differences.append((name, line))
    return [line for _, line in sorted(differences)]


def _apply_modules(tensors: Mapping[str, torch.Tensor], modules: Mapping[str, nn.Module]) -> None:
    for module_name, module in modules.items():
        prefix = f"{module_name}."
        own = {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}
        module.load_state_dict(own, strict=True)


def _refuse_nonfinite(tensors: Mapping[str, torch.Tensor], modules: Mapping[str, nn.Module], path: Path | None) -> None:
    """Refuse weights holding NaN or inf: a model built from them computes nothing but NaN."""
    prefixes = tuple(f"{module_name}." for module_name in modules)
    bad = [
        name
        for name in sorted(tensors)
        if name.startswith(prefixes) and tensors[name].is_floating_point() and not torch.isfinite(tensors[name]).all()
    ]
    if bad:
        where = f"{path}: " if path is not None else ""
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{where}tensor {bad[0]}{more} holds NaN or infinite values: the run that wrote it had diverged"
        )


def _describe(tensor: torch.Tensor) -> str:
    return f"({_dtype(tensor)} {list(tensor.shape)})"


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _listing(headline: str, lines: list[str]) -> str:
    shown = [f"  {line}" for line in lines[:_MAX_LISTED]]
    if len(lines) > _MAX_LISTED:
        shown.append(f"  ... and {len(lines) - _MAX_LISTED} more")
    return "\n".join([f"{headline} ({len(lines)} difference{'s' * (len(lines) != 1)}):", *shown])


# -- resume state -----------------------------------------------------------------------------------


def restore(
    checkpoint_dir: Path,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generators: Mapping[str, torch.Generator] = {},
) -> tuple[int, dict]:
    """Load a checkpoint folder into modules, optimizers and RNGs; returns ``(step, extra)``.

    Everything is read and checked before anything is changed, so a refused checkpoint leaves the
    objects untouched.
    """
    checkpoint_dir = Path(checkpoint_dir)
    snapshot, resume, resume_metadata = _read_pair(checkpoint_dir)
    differences = _module_differences(snapshot, modules)
    if differences:
        headline = f"{checkpoint_dir / SNAPSHOT_FILE}: the weights do not match the model"
        raise CheckpointError(_listing(headline, differences))
    _refuse_nonfinite(snapshot, modules, checkpoint_dir / SNAPSHOT_FILE)
    resume_path = checkpoint_dir / RESUME_FILE
    step = metadata_json(resume_path, resume_metadata, "step", int)
    extra = metadata_json(resume_path, resume_metadata, "extra", dict)
    layouts = metadata_json(resume_path, resume_metadata, "optimizers", dict)
    rng = metadata_json(resume_path, resume_metadata, "rng", dict)
    try:  # the layouts' inner shape is checked as it is decoded
        optimizer_states = _optimizer_states(resume_path, resume, layouts, optimizers)
        rng_states = _rng_states(resume_path, resume, rng, generators)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise CheckpointError(f"{resume_path}: malformed resume metadata ({type(error).__name__}: {error})") from None

    _apply_modules(snapshot, modules)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(optimizer_states[name])
    _apply_rng(rng_states, generators)
    return step, extra


def _resume_payload(
    step: int,
    optimizers: Mapping[str, torch.optim.Optimizer],
    extra: dict,
    generators: Mapping[str, torch.Generator],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {}
    layouts = {}
    for name, optimizer in optimizers.items():
        _check_name("optimizer", name)
        layouts[name] = _flatten_optimizer(name, optimizer, tensors)
    rng = _rng_payload(generators, tensors)
    try:
        extra_json = json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint extra must be plain JSON: {error}") from None
    metadata = {
        "format": _RESUME_FORMAT,
        "step": str(int(step)),
        "extra": extra_json,
        "optimizers": json.dumps(layouts),
        "rng": json.dumps(rng),
    }
    return _storable(tensors), metadata


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


def _rng_payload(generators: Mapping[str, torch.Generator], tensors: dict[str, torch.Tensor]) -> dict:
    tensors["rng.torch"] = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for device, state in enumerate(cuda_states):
        tensors[f"rng.cuda.{device}"] = state
    for name, generator in generators.items():
        _check_name("generator", name)
        tensors[f"rng.generator.{name}"] = generator.get_state()
    return {"cuda_devices": len(cuda_states), "generators": sorted(generators)}


def _rng_states(
    path: Path, tensors: Mapping[str, torch.Tensor], rng: dict, generators: Mapping[str, torch.Generator]
) -> dict[str, torch.Tensor]:
    if set(rng["generators"]) != set(generators):
        raise CheckpointError(
            f"{path}: holds generators {sorted(rng['generators'])}, the caller passed {sorted(generators)}"
        )
    names = ["rng.torch", *(f"rng.generator.{name}" for name in generators)]
    names += [f"rng.cuda.{device}" for device in range(rng["cuda_devices"])]
    missing = [name for name in names if name not in tensors]
    if missing:
        raise CheckpointError(f"{path}: RNG state {missing[0]} is missing")
    return {name: tensors[name] for name in names}


def _apply_rng(states: Mapping[str, torch.Tensor], generators: Mapping[str, torch.Generator]) -> None:
    """Set the torch RNGs; CUDA states are restored for the devices present here."""
    torch.set_rng_state(states["rng.torch"])
    for name, generator in generators.items():
        generator.set_state(states[f"rng.generator.{name}"])
    if torch.cuda.is_available():
        for device in range(torch.cuda.device_count()):
            if f"rng.cuda.{device}" in states:
                torch.cuda.set_rng_state(states[f"rng.cuda.{device}"], device)


def _check_name(kind: str, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} must use only letters, digits, '_' and '-'")


# -- the file format --------------------------------------------------------------------------------


def _storable(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, no two names on one storage (safetensors refuses tied or strided tensors)."""
    storable = {}
    seen_storages = set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storages and tensor.numel() > 0:
            tensor = tensor.clone()
            storage = tensor.untyped_storage().data_ptr()
        seen_storages.add(storage)
        storable[name] = tensor
    return storable


def _checksum(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """sha256 over names, dtypes, shapes and bytes in name order, then the metadata (less the sum)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        header = json.dumps([name, _dtype(tensor), list(tensor.shape), data.nbytes])
        digest.update(header.encode() + b"\n")
        digest.update(data)
    rest = {key: value for key, value in metadata.items() if key != "sha256"}
    digest.update(json.dumps(rest, sort_keys=True).encode())
    return digest.hexdigest()


def _serialize(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> tuple[bytes, str]:
    checksum = _checksum(tensors, metadata)
    return safetensors.torch.save(dict(tensors), metadata={**metadata, "sha256": checksum}), checksum


def _unreadable(path: Path, error: OSError) -> CheckpointError:
    if isinstance(error, FileNotFoundError):
        return CheckpointError(f"{path}: checkpoint file is missing")
    return CheckpointError(f"{path}: cannot read checkpoint file: {error.strerror or error}")


def _read_header_only(path: Path) -> dict:
    """The header of a safetensors file without reading its tensor data."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            head = file.read(8)
            if len(head) == 8 and 8 + _header_length(head) <= size:
                head += file.read(_header_length(head))
    except OSError as error:
        raise _unreadable(path, error) from None
    return _parse_header(path, head, size)


def _header_length(head: bytes) -> int:
    return struct.unpack("<Q", head[:8])[0]


def _parse_header(path: Path, head: bytes, size: int) -> dict:
    """The header from the file's first bytes, after checking the file is exactly as long as it says.

    safetensors: 8 bytes little-endian header length, the JSON header, then the tensor data.
    """
    if len(head) < 8 or 8 + _header_length(head) > size:
        raise CheckpointError(f"{path}: file is truncated ({size} bytes, shorter than its header)")
    length = _header_length(head)
    try:
        header = json.loads(head[8 : 8 + length])
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        raise CheckpointError(f"{path}: not a safetensors file or its header is corrupted") from None
    expected = 8 + length + end
    if size < expected:
        raise CheckpointError(f"{path}: file is truncated ({size} bytes, the header promises {expected})")
    if size > expected:
        raise CheckpointError(f"{path}: file has {size - expected} trailing bytes after its tensor data")
    return header


def _read_file(path: Path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of one checkpoint file, verified: length, format, checksum."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise _unreadable(path, error) from None
    metadata = _parse_header(path, data, len(data)).get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise CheckpointError(f"{path}: its metadata is not a table of strings, so it is not a bifamily file")
    if metadata.get("format") != expected_format:
        raise CheckpointError(
            f"{path}: not a {expected_format} file (format {metadata.get('format', 'missing')!r})"
        )
    try:
        tensors = safetensors.torch.load(data)
    except Exception as error:  # safetensors raises its own error type for malformed data
        raise CheckpointError(f"{path}: cannot decode tensors: {error}") from None
    if "sha256" not in metadata:
        raise CheckpointError(f"{path}: has no checksum")
    if _checksum(tensors, metadata) != metadata["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch, the file is corrupted")
    return tensors, metadata


def _read_pair(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    """Snapshot tensors, resume tensors and resume metadata of a checkpoint folder, all verified."""
    snapshot, snapshot_metadata = _read_file(folder / SNAPSHOT_FILE, _SNAPSHOT_FORMAT)
    resume, resume_metadata = _read_file(folder / RESUME_FILE, _RESUME_FORMAT)
    if resume_metadata.get("snapshot_sha256") != snapshot_metadata["sha256"]:
        raise CheckpointError(f"{folder / RESUME_FILE}: belongs to a different snapshot than {folder / SNAPSHOT_FILE}")
    return snapshot, resume, resume_metadata


# -- durable file operations (each one step a crash can interrupt) ----------------------------------


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _durable_replace(source: Path, destination: Path) -> None:
    os.replace(source, destination)
    _fsync_dir(destination.parent)


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` survive power loss (POSIX; Windows cannot open folders)."""
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _link_or_copy(source: Path, destination: Path) -> None:
    """A hard link where the file system has them (instant), else a copy."""
    try:
        os.link(source, destination)
    except OSError:
        _write_file(destination, source.read_bytes())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
