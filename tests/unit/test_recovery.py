"""Recovery from a diverged step or a stop signal: what it raises, when it rolls back, and how it counts
the rollbacks made without a new checkpoint in between (guard.max_rollbacks)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from bifamily import recovery
from bifamily.distributed import World
from bifamily.guard import NonFinite
from bifamily.stopping import Diverged, Interrupted
from bifamily.train_config import GuardConfig

FAILURE = NonFinite(step=7, sources=("discriminator loss",))


class FakeState:
    def __init__(self):
        self.step, self.rollbacks = 9, 0

    def set_rollbacks(self, rollbacks: int) -> None:
        self.rollbacks = rollbacks


def trainer(latest: list[Path | None], guard: GuardConfig) -> SimpleNamespace:
    """A trainer as Recovery sees it; ``latest[0]`` is the checkpoint the manager names."""
    return SimpleNamespace(
        settings=SimpleNamespace(guard=guard),
        world=World(),
        state=FakeState(),
        checkpoints=SimpleNamespace(latest=lambda: latest[0], directory=Path("run/checkpoints")),
        writer=SimpleNamespace(path=Path("run")),
        watch=SimpleNamespace(reset=lambda: None),
    )


@pytest.fixture
def loads(monkeypatch):
    """The checkpoints rolled back to; loading one sets the state to its step (100 x its number)."""
    loaded: list[Path] = []

    def load_state(state, checkpoints, checkpoint, writer):
        loaded.append(checkpoint)
        state.step = 100 * int(checkpoint.name.rsplit("-", 1)[1])
        return state.step

    monkeypatch.setattr(recovery, "load_state", load_state)
    return loaded


def test_stop_guard_raises_diverged_and_loads_nothing(loads):
    r = recovery.Recovery(trainer([Path("run/checkpoints/step-1")], GuardConfig(on_nonfinite="stop")))
    with pytest.raises(Diverged, match="at step 7 the discriminator loss was not finite"):
        r.recover(FAILURE, signum=0)
    assert loads == []


def test_a_signal_with_a_diverged_step_stops_without_a_checkpoint(loads):
    r = recovery.Recovery(trainer([Path("run/checkpoints/step-1")], GuardConfig(on_nonfinite="rollback")))
    with pytest.raises(Interrupted, match="SIGTERM after step 9, no checkpoint written"):
        r.recover(FAILURE, signum=int(signal.SIGTERM))
    assert loads == []


def test_rollbacks_are_counted_until_a_new_checkpoint_is_written(loads):
    latest = [Path("run/checkpoints/step-1")]
    t = trainer(latest, GuardConfig(on_nonfinite="rollback", max_rollbacks=2))
    r = recovery.Recovery(t)
    r.recover(FAILURE, signum=0)
    r.recover(FAILURE, signum=0)
    assert (loads, t.state.rollbacks, t.state.step) == ([latest[0]] * 2, 2, 100)
    with pytest.raises(Diverged, match=r"giving up after 2 rollback\(s\) without a new checkpoint"):
        r.recover(FAILURE, signum=0)

    latest[0] = Path("run/checkpoints/step-2")  # training got past the bad stretch and saved again
    r.recover(FAILURE, signum=0)
    assert (loads[-1], r.rollbacks_since_checkpoint, t.state.rollbacks, t.state.step) == (latest[0], 1, 3, 200)


def test_without_a_checkpoint_there_is_nothing_to_roll_back_to(loads):
    r = recovery.Recovery(trainer([None], GuardConfig(on_nonfinite="rollback")))
    with pytest.raises(Diverged, match="there is no checkpoint"):
        r.recover(FAILURE, signum=0)
    assert loads == []
