"""Resume state: exact round trips of weights, buffers and optimizers, exact resume, and a resume
state that does not fit its snapshot or the model refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bifamily.checkpoint.manager import CheckpointManager
from bifamily.checkpoint.resume import RESUME_FILE, restore
from bifamily.checkpoint.snapshot import SNAPSHOT_FILE, read_snapshot
from bifamily.errors import CheckpointError
from bifamily.randomness import derive_seed

from tests.helpers.checkpoints import (
    adam,
    assert_same_optimizer,
    assert_same_tensors,
    escape,
    restored_net,
    save_states,
    stepped_optimizer,
    trained_net,
)


# -- round trips ------------------------------------------------------------------------------------


def test_round_trip_restores_weights_buffers_and_optimizers_exactly(tmp_path):
    net = trained_net(0)
    ema = copy.deepcopy(net)
    optimizer = stepped_optimizer(net)
    manager = CheckpointManager(tmp_path / "checkpoints")
    metadata = {"recipe": '{"run": {"steps": 10}}', "step": "5", "bifamily_version": "0.1.0"}
    extra = {"data": {"epoch": 2, "batch": 17}, "note": [1.5, None]}

    modules = {"generator": net, "generator_ema": ema}
    folder = manager.save(5, modules, {"ge": optimizer}, metadata, extra)

    fresh, fresh_ema = trained_net(1), trained_net(2)
    fresh_optimizer = stepped_optimizer(fresh)
    step, restored_extra = restore(folder, {"generator": fresh, "generator_ema": fresh_ema}, {"ge": fresh_optimizer})

    assert folder == tmp_path / "checkpoints" / "step-00000005"
    assert (step, restored_extra) == (5, extra)
    assert_same_tensors(fresh.state_dict(), net.state_dict())
    assert_same_tensors(fresh_ema.state_dict(), ema.state_dict())
    assert_same_optimizer(fresh_optimizer, optimizer)
    assert isinstance(fresh_optimizer.param_groups[0]["betas"], tuple)
    x = torch.randn(3, 4)
    assert torch.equal(fresh.eval()(x), net.eval()(x))

    tensors, read_metadata = read_snapshot(folder / SNAPSHOT_FILE)
    assert read_metadata == metadata
    buffers = ("bn.running_var", "sn.parametrizations.weight.0._u", "old_sn.weight_v", "transposed")
    assert {f"generator_ema.{name}" for name in buffers} <= tensors.keys()


def test_resume_continues_bitwise_like_an_uninterrupted_run(tmp_path):
    """k steps, save, restore into fresh objects, k more == 2k straight (dropout, BN, data, Adam), with
    every random stream seeded from the step as the trainer does (so no RNG state is saved)."""

    def build(seed: int):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
        groups = [{"params": model[0].parameters()}, {"params": model[4].parameters(), "lr": 3e-3}]
        optimizer = adam(groups, lr=1e-2, betas=(0.0, 0.999))
        return model, optimizer

    def train(model, optimizer, steps: range) -> None:
        for step in steps:
            torch.manual_seed(derive_seed(0, "rank", 0, step))
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(derive_seed(0, "data", step)))
            loss = model(x).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    straight = build(0)
    train(*straight, range(6))

    first = build(0)
    train(*first, range(3))
    folder = CheckpointManager(tmp_path).save(3, {"model": first[0]}, {"opt": first[1]}, {}, {})
    second = build(1)
    step, _ = restore(folder, {"model": second[0]}, {"opt": second[1]})
    train(*second, range(step, 6))

    assert_same_tensors(second[0].state_dict(), straight[0].state_dict())
    assert_same_optimizer(second[1], straight[1])


# -- refusing bad checkpoints -----------------------------------------------------------------------


def test_files_from_different_checkpoints_are_not_mixed(tmp_path):
    save_states(tmp_path, [(1, 1), (2, 2)])
    (tmp_path / "step-00000001" / RESUME_FILE).replace(tmp_path / "step-00000002" / RESUME_FILE)
    with pytest.raises(CheckpointError, match="belongs to a different snapshot"):
        restored_net(tmp_path / "step-00000002")


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
