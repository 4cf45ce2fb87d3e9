"""The checkpoint manager: pruning, the pointer to the latest, and crashes or full disks at every file
operation."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from bifamily.checkpoint import files
from bifamily.checkpoint.manager import CheckpointManager
from bifamily.checkpoint.resume import RESUME_FILE
from bifamily.errors import CheckpointError

from tests.helpers.checkpoints import Net, assert_same_tensors, escape, flip_byte, restored_net, save_states, trained_net


# -- the pointer and pruning ------------------------------------------------------------------------


def test_keeps_the_newest_k_and_points_at_the_last(tmp_path):
    save_states(tmp_path, [(1, 1), (2, 2), (3, 3)], keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000002", "step-00000003"]
    assert (tmp_path / "latest").read_text().strip() == "step-00000003"
    assert CheckpointManager(tmp_path).latest() == tmp_path / "step-00000003"


def test_latest_falls_back_when_the_pointer_is_stale_or_missing(tmp_path):
    save_states(tmp_path, [(1, 1), (2, 2)])
    manager = CheckpointManager(tmp_path)
    for content in ("step-00000099\n", "../../etc\n", "\xff"):
        (tmp_path / "latest").write_text(content)
        assert manager.latest() == tmp_path / "step-00000002"
    (tmp_path / "latest").unlink()
    flip_byte(tmp_path / "step-00000002" / RESUME_FILE, -3)
    assert manager.latest() == tmp_path / "step-00000001"
    assert CheckpointManager(tmp_path / "nothing-here").latest() is None


def test_saving_an_earlier_step_drops_the_abandoned_later_ones(tmp_path):
    nets = save_states(tmp_path, [(1, 1), (2, 2), (3, 3)])
    (tmp_path / "latest").write_text("step-00000001\n")  # as if the run resumed from step 1
    again = save_states(tmp_path, [(2, 4)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000001", "step-00000002"]
    step, net = restored_net(CheckpointManager(tmp_path).latest())
    assert step == 2
    assert_same_tensors(net.state_dict(), again[2].state_dict())
    assert not torch.equal(nets[2].fc.weight, again[2].fc.weight)


# -- crashes and full disks -------------------------------------------------------------------------


class SimulatedCrash(BaseException):
    """The process dying: no `except Exception` handler runs."""


FILESYSTEM_STEPS = ("write_file", "durable_replace", "fsync_dir", "remove", "link_or_copy")


def install_crash(monkeypatch, crash_at: int | None) -> list[str]:
    """Wrap every durable file operation; die at operation number ``crash_at`` (a write dies halfway)."""
    calls: list[str] = []
    for name in FILESYSTEM_STEPS:
        original = getattr(files, name)

        def step(*args, _name=name, _original=original):
            calls.append(_name)
            if len(calls) - 1 == crash_at:
                if _name == "write_file":
                    path, data = args
                    path.write_bytes(data[: len(data) // 2])
                raise SimulatedCrash(_name)
            return _original(*args)

        monkeypatch.setattr(files, name, step)
    return calls


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def assert_pointer_restores_one_of(directory: Path, nets: list[Net]) -> None:
    latest = CheckpointManager(directory).latest()
    assert latest is not None
    assert (directory / "latest").read_text().strip() == latest.name, "the pointer must name a complete checkpoint"
    _, restored = restored_net(latest)
    assert any(same_weights(restored, net) for net in nets)


@pytest.mark.parametrize("resave", [False, True], ids=["new-step", "same-step-again"])
def test_a_crash_at_any_file_operation_leaves_a_loadable_latest(tmp_path, monkeypatch, resave):
    """After saving 1 and 2, save 3 (or 2 again, as after resuming at 2), dying at each operation in turn."""
    new_step = 2 if resave else 3
    save_states(tmp_path / "count", [(1, 1), (2, 2)], keep=2)
    with monkeypatch.context() as patch:
        calls = install_crash(patch, None)
        save_states(tmp_path / "count", [(new_step, 3)], keep=2)
    assert len(calls) >= 7

    for crash_at in range(len(calls)):
        directory = tmp_path / f"crash-{crash_at}"
        before = save_states(directory, [(1, 1), (2, 2)], keep=2)
        with monkeypatch.context() as patch:
            install_crash(patch, crash_at)
            with pytest.raises(SimulatedCrash):
                save_states(directory, [(new_step, 3)], keep=2)
        assert_pointer_restores_one_of(directory, [before[2], trained_net(3)])

        after = save_states(directory, [(new_step, 4)], keep=2)
        kept = ["step-00000001", "step-00000002"] if resave else ["step-00000002", "step-00000003"]
        assert sorted(p.name for p in directory.iterdir()) == ["latest", *kept]
        assert_pointer_restores_one_of(directory, [after[new_step]])


@pytest.mark.parametrize("failing_write", [0, 1, 2], ids=["snapshot", "resume", "pointer"])
def test_a_full_disk_is_reported_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch, failing_write):
    before = save_states(tmp_path, [(1, 1)])
    original = files.write_file
    calls = []

    def write_until_full(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) - 1 == failing_write:
            path.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(path, data)

    with monkeypatch.context() as patch:
        patch.setattr(files, "write_file", write_until_full)
        with pytest.raises(CheckpointError, match=r"^\S+: cannot write checkpoint: No space left on device$"):
            save_states(tmp_path, [(2, 2)])
    assert not (tmp_path / ".step-00000002.partial").exists()
    assert_pointer_restores_one_of(tmp_path, [before[1]])
    save_states(tmp_path, [(2, 2)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000001", "step-00000002"]


def test_a_failing_rename_is_reported_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    before = save_states(tmp_path, [(1, 1)])

    def failing_replace(source, destination):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", failing_replace)
        expected = rf"^{escape(tmp_path / 'step-00000002')}: cannot write checkpoint: Input/output error$"
        with pytest.raises(CheckpointError, match=expected):
            save_states(tmp_path, [(2, 2)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000001"]
    assert_pointer_restores_one_of(tmp_path, [before[1]])
