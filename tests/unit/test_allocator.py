"""`train.keep_freed_memory`: freed tensor memory stays in the process, so a CPU training step stops
faulting in fresh pages. Each arm runs in a fresh interpreter: the setting is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="train.keep_freed_memory works through glibc's mallopt; with other C libraries it does nothing to test",
)

REPO = Path(__file__).resolve().parents[2]
STEPS = """
import resource, statistics, sys, tempfile
from pathlib import Path
from bifamily.plugins import default_plugins
from bifamily.recipe import load
from bifamily.session import make_trainer, prepare

recipe = load("recipes/quickstart.toml", default_plugins(), ["train.precision=fp32", "train.batch_size=64", "generator.ch=32", sys.argv[1]])
with tempfile.TemporaryDirectory() as run_dir:
    prepared = prepare(recipe)
    trainer = make_trainer(prepared, Path(run_dir), progress=False)
    for _ in range(3):  # warm-up: the heap grows to its working size
        trainer.train_step()
    faults = []
    for _ in range(5):  # the median step: a page reclaimed by the kernel during one step does not count
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        trainer.train_step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(statistics.median(faults))
"""


def faults_per_step(setting: str) -> float:
    command = [sys.executable, "-c", textwrap.dedent(STEPS), setting]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    return float(result.stdout.strip().splitlines()[-1])


def test_a_quickstart_step_stops_faulting_in_fresh_pages():
    default = faults_per_step("train.keep_freed_memory=false")
    kept = faults_per_step("train.keep_freed_memory=true")
    assert default > 1000  # activations handed back to the kernel and faulted in again every step
    assert kept < default / 5
