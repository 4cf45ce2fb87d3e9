"""The checkpoint manager: numbered checkpoint folders, the pointer to the latest, pruning, recovery.

A checkpoint is a folder named by its step (:func:`bifamily.rundir.step_name`) holding a snapshot
(:mod:`bifamily.checkpoint.snapshot`) and its resume state (:mod:`bifamily.checkpoint.resume`).

Crash safety: both files are written into a hidden staging folder beside the checkpoint folder
(``.checkpoints.partial``), fsynced, and the folder is renamed into place; only then does the pointer
file (:data:`bifamily.rundir.POINTER_FILE`) move (written to a temporary name and renamed). A crash at
any moment leaves the pointer naming a complete checkpoint, and the checkpoint folder holds nothing but complete
checkpoints and the pointer: a run killed while writing its first checkpoint leaves none, so it is
restarted as a new run, not resumed.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from bifamily.checkpoint import files
from bifamily.checkpoint.resume import RESUME_FILE, read_pair, resume_payload
from bifamily.checkpoint.snapshot import SNAPSHOT_FILE, snapshot_payload
from bifamily.errors import CheckpointError
from bifamily.rundir import POINTER_FILE, STEP_NAME, STEP_PREFIX, step_name

# The pointer names a step folder, or, for the moment a step is saved a second time, a hidden copy of it.
_POINTABLE = re.compile(rf"{STEP_NAME.pattern}|\.{STEP_NAME.pattern}\.previous")


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
    ) -> Path:
        """Write the folder of ``step`` atomically, point ``latest`` at it, prune; returns the folder.

        Saving step s also removes folders of steps after s: they belong to a timeline abandoned by
        resuming from an earlier checkpoint, and would otherwise be taken for the newest.
        """
        # Everything that can be refused (names, metadata, extra) is checked before the disk is touched;
        # the `del`s keep one serialized file in memory at a time.
        snapshot_tensors, snapshot_metadata = snapshot_payload(modules, metadata)
        snapshot_bytes, snapshot_sha = files.serialize(snapshot_tensors, snapshot_metadata)
        del snapshot_tensors
        resume_tensors, resume_metadata = resume_payload(step, optimizers, extra)
        resume_metadata["snapshot_sha256"] = snapshot_sha

        name = step_name(step)
        final = self.directory / name
        staging = self.staging
        writing = final  # named in the error if the disk fails
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            if staging.exists():
                files.remove(staging)
            staging.mkdir()
            writing = staging / SNAPSHOT_FILE
            files.write_file(writing, snapshot_bytes)
            del snapshot_bytes
            writing = staging / RESUME_FILE
            files.write_file(writing, files.serialize(resume_tensors, resume_metadata)[0])
            writing = final
            files.fsync_dir(staging)
            self.directory.mkdir(exist_ok=True)
            if final.exists():
                self._clear_existing(final)
            files.durable_replace(staging, final)
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
                read_pair(folder)
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
        match = STEP_NAME.search(folder.name) if folder is not None else None
        return int(match.group(1)) if match else None

    def whole_before(self, folder: Path) -> Path | None:
        """When ``folder`` is damaged, the newest earlier checkpoint that verifies (None otherwise)."""
        match = STEP_NAME.fullmatch(Path(folder).name)
        if match is None or _verifies(folder):
            return None
        earlier = [(step, path) for step, path in self._step_folders() if step < int(match.group(1))]
        return next((path for _, path in sorted(earlier, reverse=True) if _verifies(path)), None)

    def _clear_existing(self, final: Path) -> None:
        """Remove an older save of the same step; if ``latest`` names it, repoint to a copy first."""
        if self._pointer_target() == final.name and _looks_complete(final):
            preserved = self.directory / f".{final.name}.previous"
            if preserved.exists():
                files.remove(preserved)
            preserved.mkdir()
            for file in (SNAPSHOT_FILE, RESUME_FILE):
                files.link_or_copy(final / file, preserved / file)
            files.fsync_dir(preserved)
            self._point_to(preserved.name)
        files.remove(final)

    def _point_to(self, folder_name: str) -> None:
        temporary = self.directory / f".{POINTER_FILE}.tmp"
        files.write_file(temporary, f"{folder_name}\n".encode())
        files.durable_replace(temporary, self.directory / POINTER_FILE)

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
            if (match := STEP_NAME.fullmatch(path.name)) and path.is_dir()
        ]

    def _prune(self, saved_step: int) -> None:
        """Keep the newest ``keep`` complete checkpoints up to ``saved_step``; drop everything else."""
        target = self._pointer_target()
        for path in self.directory.iterdir():
            leftover = path.name.startswith(f".{STEP_PREFIX}") or path.name == f".{POINTER_FILE}.tmp"
            if leftover and path.name != target:
                files.remove(path)
        kept = 0
        for step, folder in sorted(self._step_folders(), reverse=True):
            complete = (folder / SNAPSHOT_FILE).is_file() and (folder / RESUME_FILE).is_file()
            if folder.name != target and (step > saved_step or not complete or kept >= self.keep):
                files.remove(folder)
            else:
                kept += 1


def _verifies(folder: Path) -> bool:
    try:
        read_pair(folder)
    except CheckpointError:
        return False
    return True


def _looks_complete(folder: Path) -> bool:
    """Both files present and as long as their headers say (cheap; no checksum)."""
    try:
        for file in (SNAPSHOT_FILE, RESUME_FILE):
            files.read_header_only(folder / file)
    except CheckpointError:
        return False
    return True
