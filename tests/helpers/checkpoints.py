"""Checkpoint test helpers: a small net with every kind of state a checkpoint keeps, saving and
restoring it, comparing states exactly, and damaging files."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from bifamily.checkpoint.manager import CheckpointManager
from bifamily.checkpoint.resume import restore


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
    """Save one checkpoint per (step, seed) with a net trained from that seed (and an optimizer with
    Adam state, so the resume file holds tensors); returns the nets."""
    manager = CheckpointManager(directory, keep=keep)
    nets = {}
    for step, seed in steps_and_seeds:
        nets[step] = trained_net(seed)
        optimizer = stepped_optimizer(trained_net(seed))  # a twin: the saved weights stay trained_net(seed)'s
        manager.save(step, {"generator": nets[step]}, {"g": optimizer}, {"step": str(step)}, {"batch": step})
    return nets


def restored_net(folder: Path) -> tuple[int, Net]:
    net = trained_net(99)
    step, _ = restore(folder, {"generator": net}, {"g": stepped_optimizer(trained_net(98))})
    return step, net


def escape(path: Path) -> str:
    return re.escape(str(path))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
