"""SIGKILL at random moments, checkpoint writes included: every restart succeeds and the run ends with
exactly the weights and the log of a run that was never interrupted.

Each attempt is a fresh `python -m bifamily run` process with a tiny model that checkpoints every step.
It is killed (SIGKILL: no handler, no cleanup) either while a checkpoint is being assembled, a short
random time after it made progress, or while still starting up. It is then restarted the way a job
script would: with `--resume` when the checkpoint folder holds anything, as a new run otherwise.
The default suite kills 3 times; `pytest -m slow` runs the 20-kill version.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bifamily.checkpoint.manager import CheckpointManager
from bifamily.checkpoint.resume import read_pair

from tests.helpers.tiny_model import TINY_MODEL

RECIPE = """
[run]
name = "fault"
log_every = 2
sample_every = 1000
checkpoint_every = 1
keep_checkpoints = 2
""" + TINY_MODEL
ENV = {**os.environ, "BIFAMILY_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
ATTEMPT_TIMEOUT_S = 180
MODES = ("during a checkpoint write", "after progress", "during start-up")


def start(recipe: Path, out: Path, steps: int) -> subprocess.Popen:
    checkpoints = out / "checkpoints"
    resume = checkpoints.is_dir() and any(checkpoints.iterdir())
    command = [sys.executable, "-m", "bifamily", "run", str(recipe), "--set", f"run.steps={steps}",
               "--out", str(out), "--no-progress", *(["--resume"] if resume else [])]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pointer(out: Path) -> str | None:
    try:
        return (out / "checkpoints" / "latest").read_text()
    except OSError:
        return None


def wait_until(process: subprocess.Popen, condition, poll_s: float) -> bool:
    """True once ``condition()`` holds; False if the process ended first."""
    deadline = time.monotonic() + ATTEMPT_TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the attempt made no progress"
        time.sleep(poll_s)
    return True


def kill_at(process: subprocess.Popen, out: Path, mode: str, rng: random.Random) -> bool:
    """SIGKILL the process at a moment of the given kind; False if it finished before."""
    staging = out / ".checkpoints.partial"
    if mode == "during a checkpoint write":
        # The folder exists from mkdir to the rename into checkpoints/: both files are written meanwhile.
        reached = wait_until(process, staging.is_dir, poll_s=0.0002)
    elif mode == "after progress":
        before = pointer(out)
        reached = wait_until(process, lambda: pointer(out) not in (None, before), poll_s=0.01)
        time.sleep(rng.uniform(0.0, 0.25))
    else:
        reached = process.poll() is None
        time.sleep(rng.uniform(0.0, 1.5))
    if not reached or process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    return True


def losses(out: Path) -> list[dict]:
    lines = (out / "stats.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


def final_snapshot(out: Path) -> dict[str, torch.Tensor]:
    return load_file(CheckpointManager(out / "checkpoints").latest() / "snapshot.safetensors")


def assert_latest_is_loadable(out: Path, last_step: int) -> int:
    """The checkpoint a restart would take verifies (checksums, pairing) and never goes backwards."""
    latest = CheckpointManager(out / "checkpoints").latest()
    if latest is None:
        assert last_step == 0, "a checkpoint was lost"
        return 0
    step = int(latest.name.removeprefix("step-"))
    assert step >= last_step
    _, _, metadata = read_pair(latest)  # what restoring verifies: lengths, checksums, pairing
    assert int(metadata["step"]) == step
    return step


def run_with_kills(tmp_path: Path, kills: int, steps: int, seed: int) -> None:
    recipe = tmp_path / "fault.toml"
    recipe.write_text(RECIPE)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = start(recipe, straight, steps)
    _, stderr = reference.communicate(timeout=ATTEMPT_TIMEOUT_S)
    assert reference.returncode == 0, stderr

    rng = random.Random(seed)
    done, last_step, history = 0, 0, []
    while done < kills:
        mode = MODES[done % len(MODES)] if kills >= len(MODES) else MODES[done % 2]
        process = start(recipe, killed, steps)
        if not kill_at(process, killed, mode, rng):
            _, stderr = process.communicate(timeout=ATTEMPT_TIMEOUT_S)
            assert process.returncode == 0, stderr
            pytest.fail(f"the run finished after {done} kills ({history}); give it more steps")
        done += 1
        last_step = assert_latest_is_loadable(killed, last_step)
        history.append((mode, last_step))

    process = start(recipe, killed, steps)
    _, stderr = process.communicate(timeout=ATTEMPT_TIMEOUT_S)
    assert process.returncode == 0, stderr
    assert not (killed / ".checkpoints.partial").exists()
    a, b = final_snapshot(straight), final_snapshot(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after kills {history}"
    assert losses(killed) == losses(straight), history


def test_three_sigkills_including_one_during_a_checkpoint_write(tmp_path):
    run_with_kills(tmp_path, kills=3, steps=14, seed=0)


@pytest.mark.slow
def test_twenty_sigkills_at_random_moments(tmp_path):
    run_with_kills(tmp_path, kills=20, steps=40, seed=1)
