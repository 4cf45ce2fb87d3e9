"""Fixtures of the checkpoint tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers.checkpoints import save_states


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    """Tiny tensors: one thread (waking a second costs more than the work on a busy 2-core machine),
    and no disk flushes (power loss cannot be observed from a test; the calls still run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(os, "fsync", lambda descriptor: None)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def folder(tmp_path) -> Path:
    save_states(tmp_path, [(1, 1)])
    return tmp_path / "step-00000001"
