"""Snapshots: metadata round trips, reserved names are refused, and the tensors that do not match the
model are listed."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bifamily.checkpoint.snapshot import SNAPSHOT_FILE, load_modules, read_snapshot, save_snapshot
from bifamily.errors import CheckpointError

from tests.helpers.checkpoints import assert_same_tensors, trained_net


# -- round trips ------------------------------------------------------------------------------------


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


# -- refusing bad checkpoints -----------------------------------------------------------------------


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
