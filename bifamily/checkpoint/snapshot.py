"""Snapshots: the weights of named modules in one safetensors file, with str->str metadata, and the
model rebuilt from one.

Tensor names are ``<module>.<state_dict key>``. Every snapshot bifamily writes (checkpoints, the best
snapshot, exported weights) carries :func:`snapshot_metadata`: the resolved recipe, the step and the
bifamily version, so a snapshot alone is enough to evaluate or sample; it is what a user shares.

:func:`load_snapshot` (``bifamily eval``, ``sample``, ``reconstruct``, ``plot``) and
:func:`bifamily.interop.load_module` accept a snapshot file, a checkpoint folder, ``RUN_DIR/best`` or a
run directory (its latest checkpoint), and rebuild the model with :func:`rebuild_model`: the EMA
weights for the generator and encoder, which every evaluation uses. Overrides apply to the stored
recipe first (data paths of the machine that trained may not exist here).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bifamily import __version__
from bifamily.build import Model, build_model, make_context
from bifamily.checkpoint import files
from bifamily.errors import CheckpointError
from bifamily.plugins import PluginSet
from bifamily.recipe import TOO_DEEP, Recipe, apply_overrides, from_dict, too_deep

SNAPSHOT_FILE = "snapshot.safetensors"
SNAPSHOT_FORMAT = "bifamily.snapshot/1"
RESERVED_KEYS = ("format", "sha256")
EMA_MODULES = ("generator", "encoder")  # the modules whose EMA weights evaluation and export use
_MAX_LISTED = 10
_REQUIRED = object()
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def save_snapshot(path: Path, modules: dict[str, nn.Module], metadata: dict[str, str]) -> None:
    """Write the modules' weights and ``metadata`` to ``path`` (atomically, via a temporary name)."""
    path = Path(path)
    data, _ = files.serialize(*snapshot_payload(modules, metadata))
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        files.write_file(temporary, data)
        files.durable_replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write snapshot: {error.strerror or error}") from error


def read_snapshot(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the caller's metadata of a snapshot file, after verifying its checksum."""
    tensors, metadata = files.read_file(Path(path), SNAPSHOT_FORMAT)
    return tensors, {key: value for key, value in metadata.items() if key not in RESERVED_KEYS}


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
    differences = module_differences(tensors, modules)
    if differences:
        where = f"{path}: " if path is not None else ""
        raise CheckpointError(listing(f"{where}the checkpoint does not match the model", differences))
    refuse_nonfinite(tensors, modules, path)
    apply_modules(tensors, modules)


def snapshot_payload(
    modules: Mapping[str, nn.Module], metadata: Mapping[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a snapshot file; refuses metadata that is not str->str or uses a reserved key."""
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"snapshot metadata must map str to str, got {key!r}: {type(value).__name__}")
        if key in RESERVED_KEYS:
            raise ValueError(f"snapshot metadata key {key!r} is reserved")
    tensors: dict[str, torch.Tensor] = {}
    for module_name, module in modules.items():
        files.check_name("module", module_name)
        for key, tensor in module.state_dict().items():
            tensors[f"{module_name}.{key}"] = tensor
    return files.storable(tensors), {**metadata, "format": SNAPSHOT_FORMAT}


def module_differences(tensors: Mapping[str, torch.Tensor], modules: Mapping[str, nn.Module]) -> list[str]:
    """One line per tensor of the named modules that is missing, unexpected, or of another shape or dtype."""
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
            line = f"dtype of {name}: {files.dtype_name(have)} in the checkpoint, {files.dtype_name(want)} in the model"
            differences.append((name, line))
    return [line for _, line in sorted(differences)]


def apply_modules(tensors: Mapping[str, torch.Tensor], modules: Mapping[str, nn.Module]) -> None:
    for module_name, module in modules.items():
        prefix = f"{module_name}."
        own = {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}
        module.load_state_dict(own, strict=True)


def refuse_nonfinite(tensors: Mapping[str, torch.Tensor], modules: Mapping[str, nn.Module], path: Path | None) -> None:
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
    return f"({files.dtype_name(tensor)} {list(tensor.shape)})"


def listing(headline: str, lines: list[str]) -> str:
    """``headline`` with the number of differences, then the first of them, one per line."""
    shown = [f"  {line}" for line in lines[:_MAX_LISTED]]
    if len(lines) > _MAX_LISTED:
        shown.append(f"  ... and {len(lines) - _MAX_LISTED} more")
    return "\n".join([f"{headline} ({len(lines)} difference{'s' * (len(lines) != 1)}):", *shown])


# -- bifamily's snapshots: metadata, and the model rebuilt from it ---------------------------------


def snapshot_metadata(recipe: Recipe, step: int | None = None, **more: str) -> dict[str, str]:
    """The metadata of a snapshot of a run of ``recipe``: the resolved recipe as JSON, the ``step`` when
    given, the bifamily version, then ``more``."""
    metadata = {"recipe": recipe.to_json()}
    if step is not None:
        metadata["step"] = str(step)
    metadata["bifamily_version"] = __version__
    return {**metadata, **more}


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


def rebuild_model(
    path: Path,
    plugins: PluginSet,
    overrides: list[str] = (),
    device: torch.device | str = "cpu",
    ema: tuple[str, ...] = EMA_MODULES,
) -> tuple[Model, Recipe, int]:
    """The model of snapshot file ``path`` built from its recipe (``overrides`` applied first) for
    ``device``, with the EMA weights of the ``ema`` modules loaded; the recipe; the step."""
    tensors, raw, step = read_model_snapshot(path, ema[0] if len(ema) == 1 else "model")
    recipe = from_dict(apply_overrides(raw, list(overrides)), plugins, source=str(path))
    model = build_model(recipe, make_context(recipe, device))
    load_modules(tensors, {f"{name}_ema": getattr(model, name) for name in ema}, path)
    return model, recipe, step
