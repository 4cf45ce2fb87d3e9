"""BatchStream: page-locked batches for a CUDA device, unchanged batches otherwise.

This machine has no CUDA, so ``Tensor.pin_memory`` is replaced by a recorder: the test checks that
every tensor of every batch goes through it when asked, and that none does by default.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from bifamily.data import BatchStream


@pytest.fixture
def pinned_ids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pinned: list[int] = []

    def record(tensor: torch.Tensor) -> torch.Tensor:
        copy = tensor.clone()
        pinned.append(id(copy))
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", record)
    return pinned


def _dataset() -> TensorDataset:
    return TensorDataset(torch.arange(40.0).view(10, 4), torch.arange(10))


@pytest.mark.parametrize("pin", [False, True])
def test_batches_are_pinned_only_when_asked(pinned_ids: list[int], pin: bool) -> None:
    stream = BatchStream(_dataset(), batch_size=4, seed=0, pin_memory=pin)
    plain = BatchStream(_dataset(), batch_size=4, seed=0)
    for _ in range(3):  # crosses an epoch boundary (2 full batches per epoch)
        images, labels = next(stream)
        expected_images, expected_labels = next(plain)
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
        assert (id(images) in pinned_ids and id(labels) in pinned_ids) == pin
    assert len(pinned_ids) == (6 if pin else 0)
