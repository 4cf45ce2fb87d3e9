"""``python -m bench.update_modes``: both modes timed side by side, and the simultaneous step counts
fewer FLOPs (it skips one pass of G, E and D)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "train.batch_size=4", "prior.dim=16", "generator.ch=4", "encoder.ch=4", "discriminator.ch=4",
    "discriminator.z_width=16", "discriminator.joint_width=16",
]


def test_both_modes_are_timed_and_the_simultaneous_step_computes_less(tmp_path):
    output = tmp_path / "modes.json"
    sets = [f"--set={item}" for item in TINY]
    completed = subprocess.run(
        [sys.executable, "-m", "bench.update_modes", *sets, "--steps", "2", "--warmup", "1", "--threads", "1", "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(output.read_text())
    alternating, simultaneous = result["modes"]["alternating"], result["modes"]["simultaneous"]
    assert result["speedup"] == alternating["step_seconds"] / simultaneous["step_seconds"]
    # The quickstart's d_steps = 1: alternating = G, E and D forward twice; simultaneous once.
    assert 0.6 * alternating["flops_per_step"] < simultaneous["flops_per_step"] < 0.9 * alternating["flops_per_step"]
    assert "faster" in completed.stdout and result["machine"]["cpu_capability"]
