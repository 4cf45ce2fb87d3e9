"""The file layer under checkpoints and snapshots: safetensors files with a checksum, written durably.

Every file holds tensors and a str->str metadata table with ``format`` and ``sha256`` (a checksum over
the tensors and the rest of the metadata). Reading one verifies its length against its header, its
format and its checksum; nothing is ever unpickled. Each durable operation below is one step a crash
can interrupt: data is fsynced before a rename makes it visible, and the rename is fsynced too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

from bifamily.errors import CheckpointError

_NAME = re.compile(r"[A-Za-z0-9_\-]+")


def check_name(kind: str, name: str) -> None:
    """Refuse a module, optimizer or generator name that would not make a clean tensor-name prefix."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} must use only letters, digits, '_' and '-'")


def dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def storable(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def checksum(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """sha256 over names, dtypes, shapes and bytes in name order, then the metadata (less the sum)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        header = json.dumps([name, dtype_name(tensor), list(tensor.shape), data.nbytes])
        digest.update(header.encode() + b"\n")
        digest.update(data)
    rest = {key: value for key, value in metadata.items() if key != "sha256"}
    digest.update(json.dumps(rest, sort_keys=True).encode())
    return digest.hexdigest()


def serialize(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> tuple[bytes, str]:
    """The file's bytes, with ``metadata["sha256"]`` added, and that checksum."""
    sha = checksum(tensors, metadata)
    return safetensors.torch.save(dict(tensors), metadata={**metadata, "sha256": sha}), sha


def _unreadable(path: Path, error: OSError) -> CheckpointError:
    if isinstance(error, FileNotFoundError):
        return CheckpointError(f"{path}: checkpoint file is missing")
    return CheckpointError(f"{path}: cannot read checkpoint file: {error.strerror or error}")


def read_header_only(path: Path) -> dict:
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


def read_file(path: Path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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
    if checksum(tensors, metadata) != metadata["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch, the file is corrupted")
    return tensors, metadata


# -- durable file operations (each one step a crash can interrupt) ----------------------------------


def write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def durable_replace(source: Path, destination: Path) -> None:
    os.replace(source, destination)
    fsync_dir(destination.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` survive power loss (POSIX; Windows cannot open folders)."""
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def link_or_copy(source: Path, destination: Path) -> None:
    """A hard link where the file system has them (instant), else a copy."""
    try:
        os.link(source, destination)
    except OSError:
        write_file(destination, source.read_bytes())


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
