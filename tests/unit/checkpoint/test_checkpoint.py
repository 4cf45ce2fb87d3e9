"""Checkpoints: exact round trips, exact resume, pruning, corruption and crashes at every step."""

from __future__ import annotations

import copy
import errno
import os
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bifamily.checkpoint import files
from bifamily.checkpoint.manager import CheckpointManager
from bifamily.checkpoint.resume import RESUME_FILE, restore
from bifamily.checkpoint.snapshot import SNAPSHOT_FILE, load_modules, read_snapshot, save_snapshot
from bifamily.errors import CheckpointError


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    """Tiny tensors: one thread (waking a second costs more than the work on a busy 2-core machine),
    and no disk flushes (power loss cannot be observed from a test; the calls still run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(os, "fsync", lambda descriptor: None)
    yield
    torch.set_num_threads(threads)


class Net(nn.Module):
    """Parameters, BN buffers, both spectral-norm styles, a tied weight and a strided buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.sn = nn.utils.parametrizations.spectral_norm(nn.Linear(6, 3))
        self.old_sn = nn.utils.spectral_norm(nn.Linear(3, 2))
        self.head = nn.Linear(2, 2)
        self.tied = nn.Linear(2, 2)
        self.tied.weight = self.head.weight
        self.register_buffer("transposed", torch.randn(3, 5).t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tied(self.head(self.old_sn(torch.relu(self.sn(self.bn(self.fc(x)))))))


def trained_net(seed: int) -> Net:
    """A net whose BN statistics and power-iteration vectors have moved away from their init."""
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(8, 4))
    return net


def adam(params, **kwargs) -> torch.optim.Adam:
    """Fused Adam where this torch has it on CPU, else foreach (the variants that keep a tensor step)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except RuntimeError:
        return torch.optim.Adam(params, foreach=True, **kwargs)


def stepped_optimizer(net: nn.Module) -> torch.optim.Optimizer:
    groups = [{"params": [net.fc.weight, net.fc.bias]}, {"params": list(net.head.parameters()), "lr": 0.1}]
    optimizer = adam(groups, betas=(0.0, 0.999))
    net(torch.randn(8, 4)).square().mean().backward()
    optimizer.step()
    return optimizer


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def assert_same_optimizer(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for index in sa["state"]:
        assert_same_tensors(sa["state"][index], sb["state"][index])


def save_states(directory: Path, steps_and_seeds: list[tuple[int, int]], keep: int = 3) -> dict[int, Net]:
    """Save one checkpoint per (step, seed) with a net trained from that seed; returns the nets."""
    manager = CheckpointManager(directory, keep=keep)
    nets = {}
    for step, seed in steps_and_seeds:
        nets[step] = trained_net(seed)
        manager.save(step, {"generator": nets[step]}, {}, {"step": str(step)}, {"batch": step})
    return nets


def restored_net(folder: Path) -> tuple[int, Net]:
    net = trained_net(99)
    step, _ = restore(folder, {"generator": net}, {})
    return step, net


# -- round trips ------------------------------------------------------------------------------------


def test_round_trip_restores_weights_buffers_optimizers_and_rngs_exactly(tmp_path):
    net = trained_net(0)
    ema = copy.deepcopy(net)
    optimizer = stepped_optimizer(net)
    data_rng = torch.Generator().manual_seed(7)
    manager = CheckpointManager(tmp_path / "checkpoints")
    metadata = {"recipe": '{"run": {"steps": 10}}', "step": "5", "bifamily_version": "0.1.0"}
    extra = {"data": {"epoch": 2, "batch": 17}, "note": [1.5, None]}

    modules = {"generator": net, "generator_ema": ema}
    folder = manager.save(5, modules, {"ge": optimizer}, metadata, extra, {"data": data_rng})
    expected_draws = torch.rand(4), torch.rand(4, generator=data_rng)

    torch.manual_seed(123)
    fresh, fresh_ema = trained_net(1), trained_net(2)
    fresh_optimizer = stepped_optimizer(fresh)
    fresh_rng = torch.Generator().manual_seed(0)
    step, restored_extra = restore(
        folder, {"generator": fresh, "generator_ema": fresh_ema}, {"ge": fresh_optimizer}, {"data": fresh_rng}
    )

    assert folder == tmp_path / "checkpoints" / "step-00000005"
    assert (step, restored_extra) == (5, extra)
    assert_same_tensors(fresh.state_dict(), net.state_dict())
    assert_same_tensors(fresh_ema.state_dict(), ema.state_dict())
    assert_same_optimizer(fresh_optimizer, optimizer)
    assert isinstance(fresh_optimizer.param_groups[0]["betas"], tuple)
    assert torch.equal(torch.rand(4), expected_draws[0])
    assert torch.equal(torch.rand(4, generator=fresh_rng), expected_draws[1])
    x = torch.randn(3, 4)
    assert torch.equal(fresh.eval()(x), net.eval()(x))

    tensors, read_metadata = read_snapshot(folder / SNAPSHOT_FILE)
    assert read_metadata == metadata
    buffers = ("bn.running_var", "sn.parametrizations.weight.0._u", "old_sn.weight_v", "transposed")
    assert {f"generator_ema.{name}" for name in buffers} <= tensors.keys()


@settings(max_examples=25, deadline=None)
@given(metadata=st.dictionaries(st.text().filter(lambda key: key not in ("format", "sha256")), st.text(), max_size=4))
def test_snapshot_metadata_round_trips(tmp_path_factory, metadata):
    path = tmp_path_factory.mktemp("snapshot") / "weights.safetensors"
    save_snapshot(path, {"generator": nn.Linear(2, 2)}, metadata)
    assert read_snapshot(path)[1] == metadata


def test_save_refuses_reserved_metadata_and_dotted_names(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_snapshot(tmp_path / "a.safetensors", {"generator": nn.Linear(2, 2)}, {"sha256": "x"})
    with pytest.raises(ValueError, match="module name"):
        save_snapshot(tmp_path / "a.safetensors", {"gen.erator": nn.Linear(2, 2)}, {})


def test_resume_continues_bitwise_like_an_uninterrupted_run(tmp_path):
    """k steps, save, restore into fresh objects, k more == 2k straight (dropout, BN, data RNG, Adam)."""

    def build(seed: int):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
        groups = [{"params": model[0].parameters()}, {"params": model[4].parameters(), "lr": 3e-3}]
        optimizer = adam(groups, lr=1e-2, betas=(0.0, 0.999))
        return model, optimizer, torch.Generator().manual_seed(seed + 1)

    def train(model, optimizer, data_rng, steps: int) -> None:
        for _ in range(steps):
            x = torch.randn(8, 4, generator=data_rng)
            loss = model(x).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    straight = build(0)
    train(*straight, 6)

    first = build(0)
    train(*first, 3)
    folder = CheckpointManager(tmp_path).save(3, {"model": first[0]}, {"opt": first[1]}, {}, {}, {"data": first[2]})
    second = build(1)
    restore(folder, {"model": second[0]}, {"opt": second[1]}, {"data": second[2]})
    train(*second, 3)

    assert_same_tensors(second[0].state_dict(), straight[0].state_dict())
    assert_same_optimizer(second[1], straight[1])


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


# -- refusing bad checkpoints -----------------------------------------------------------------------


def escape(path: Path) -> str:
    return re.escape(str(path))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture
def folder(tmp_path) -> Path:
    save_states(tmp_path, [(1, 1)])
    return tmp_path / "step-00000001"


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


def test_files_from_different_checkpoints_are_not_mixed(tmp_path):
    save_states(tmp_path, [(1, 1), (2, 2)])
    (tmp_path / "step-00000001" / RESUME_FILE).replace(tmp_path / "step-00000002" / RESUME_FILE)
    with pytest.raises(CheckpointError, match="belongs to a different snapshot"):
        restored_net(tmp_path / "step-00000002")


def test_load_modules_lists_renamed_reshaped_and_retyped_tensors(folder):
    tensors, _ = read_snapshot(folder / SNAPSHOT_FILE)
    tensors["generator.fc.weights"] = tensors.pop("generator.fc.weight")
    tensors["generator.fc.bias"] = torch.zeros(7)
    tensors["generator.head.bias"] = tensors["generator.head.bias"].double()
    net = trained_net(5)
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(CheckpointError) as caught:
        load_modules(tensors, {"generator": net})
    assert str(caught.value).splitlines() == [
        "the checkpoint does not match the model (4 differences):",
        "  shape of generator.fc.bias: [7] in the checkpoint, [6] in the model",
        "  missing generator.fc.weight (float32 [6, 4])",
        "  unexpected generator.fc.weights (float32 [6, 4])",
        "  dtype of generator.head.bias: float64 in the checkpoint, float32 in the model",
    ]
    assert_same_tensors(net.state_dict(), before)


def test_long_difference_lists_are_cut_after_ten(folder):
    tensors, _ = read_snapshot(folder / SNAPSHOT_FILE)
    with pytest.raises(CheckpointError) as caught:
        load_modules(tensors, {"generator": nn.Sequential(*(nn.Linear(1, 1) for _ in range(15)))})
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("the checkpoint does not match the model (")
    assert len(lines) == 12
    assert lines[-1].startswith("  ... and ") and lines[-1].endswith(" more")


def test_restore_names_the_file_and_changes_nothing_when_the_model_differs(folder):
    net = nn.Linear(4, 6)
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(CheckpointError, match=rf"^{escape(folder / SNAPSHOT_FILE)}: the weights do not match"):
        restore(folder, {"generator": net}, {})
    assert_same_tensors(net.state_dict(), before)


def test_an_optimizer_over_different_parameters_is_refused(tmp_path):
    net = trained_net(0)
    folder = CheckpointManager(tmp_path).save(1, {"generator": net}, {"d": stepped_optimizer(net)}, {}, {})
    fewer = adam([net.fc.weight, net.fc.bias])
    expected = r"optimizer 'd' does not match: parameters per group \[2, 2\] in the checkpoint, \[2\] in the model$"
    with pytest.raises(CheckpointError, match=rf"^{escape(folder / RESUME_FILE)}: {expected}"):
        restore(folder, {"generator": net}, {"d": fewer})
    swapped = adam([{"params": [net.fc.bias, net.fc.weight]}, {"params": list(net.head.parameters())}])
    expected = r"parameter 0 has shape \[6, 4\] in the checkpoint, \[6\] in the model \(and 1 more\)$"
    with pytest.raises(CheckpointError, match=expected):
        restore(folder, {"generator": net}, {"d": swapped})
    with pytest.raises(CheckpointError, match=r"holds optimizers \['d'\], the model has \['ge'\]"):
        restore(folder, {"generator": net}, {"ge": fewer})


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
