"""Checkpoints in safetensors: a portable snapshot of the weights, and the state needed to resume.

A checkpoint folder holds two files:

- ``snapshot.safetensors`` (:mod:`~bifamily.checkpoint.snapshot`): the weights of named modules and
  the caller's str->str metadata (the trainer stores the resolved recipe there). This file alone is
  enough to evaluate or sample; it is what a user shares.
- ``resume.safetensors`` (:mod:`~bifamily.checkpoint.resume`): optimizer states, the step and a
  JSON-able ``extra`` dict, tied to its snapshot by the snapshot's checksum.

:mod:`~bifamily.checkpoint.manager` numbers the folders, moves the pointer to the latest, prunes and
finds the checkpoint to resume from (where they lie in a run directory: :class:`bifamily.rundir.RunDir`);
:mod:`~bifamily.checkpoint.files` is the file layer under all of them (checksums, length checks, fsync and atomic renames). Nothing is ever unpickled.

:func:`~bifamily.checkpoint.loading.load_snapshot` rebuilds a trained model from a snapshot alone.
"""

from bifamily.checkpoint.loading import load_snapshot
from bifamily.checkpoint.manager import CheckpointManager
from bifamily.checkpoint.resume import RESUME_FILE, restore
from bifamily.checkpoint.snapshot import (
    SNAPSHOT_FILE,
    load_modules,
    metadata_json,
    read_snapshot,
    save_snapshot,
)

__all__ = [
    "RESUME_FILE",
    "SNAPSHOT_FILE",
    "CheckpointManager",
    "load_modules",
    "load_snapshot",
    "metadata_json",
    "read_snapshot",
    "restore",
    "save_snapshot",
]
