"""The file layer under checkpoints: truncated, corrupted and missing files are refused, naming the file."""

from __future__ import annotations

import pytest

from bifamily.checkpoint.resume import RESUME_FILE
from bifamily.checkpoint.snapshot import SNAPSHOT_FILE, read_snapshot
from bifamily.errors import CheckpointError

from tests.helpers.checkpoints import escape, flip_byte, restored_net


# -- refusing bad checkpoints -----------------------------------------------------------------------


def test_truncated_files_are_refused(folder):
    snapshot = folder / SNAPSHOT_FILE
    data = snapshot.read_bytes()
    snapshot.write_bytes(data[:-10])
    expected = r"file is truncated \(\d+ bytes, the header promises \d+\)$"
    with pytest.raises(CheckpointError, match=rf"^{escape(snapshot)}: {expected}"):
        read_snapshot(snapshot)
    snapshot.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match=rf"^{escape(snapshot)}: file is truncated"):
        read_snapshot(snapshot)


@pytest.mark.parametrize("file", [SNAPSHOT_FILE, RESUME_FILE])
def test_a_flipped_bit_is_caught_by_the_checksum(folder, file):
    flip_byte(folder / file, -5)
    with pytest.raises(CheckpointError, match=rf"^{escape(folder / file)}: checksum mismatch, the file is corrupted$"):
        restored_net(folder)


def test_a_missing_file_is_named(folder):
    (folder / RESUME_FILE).unlink()
    with pytest.raises(CheckpointError, match=rf"^{escape(folder / RESUME_FILE)}: checkpoint file is missing$"):
        restored_net(folder)
