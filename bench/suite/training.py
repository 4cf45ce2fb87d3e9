"""The training step as ``bifamily run`` executes it, timed and its FLOPs counted.

A step is one call of :meth:`bifamily.train.Trainer.train_step`: ``train.d_steps`` D updates and one
G+E update (or one simultaneous update of both), each on a fresh batch from the recipe's data
pipeline, then the EMA update -- everything ``fit`` does per step except the interval work (logging,
grids, checkpoints).
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from bifamily.plugins import default_plugins
from bifamily.recipe import Recipe, load
from bifamily.session import make_trainer, prepare
from bifamily.train import Trainer


def load_recipe(path: str, overrides: tuple[str, ...]) -> Recipe:
    return load(path, default_plugins(), list(overrides))


@contextlib.contextmanager
def compile_backend(backend: str) -> Iterator[None]:
    """Make ``torch.compile`` use ``backend`` while the block runs (for ``--quick``: "eager" traces
    the step with dynamo but generates no code, so it checks the plumbing without minutes of C++)."""
    original = torch.compile
    torch.compile = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        torch.compile = original


def with_threads(threads: int, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` with ``threads`` torch threads (0: leave torch's default)."""
    if threads:
        torch.set_num_threads(threads)
    return fn(*args)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(trainer: Trainer, device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds of one step."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train_step()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def count_step_flops(trainer: Trainer) -> int:
    """FLOPs of one step by torch's flop counter (matmuls, convolutions and attention, forward and
    backward). Count it on an eager step: a compiled step does the same model arithmetic."""
    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    return counter.get_total_flops()


@contextlib.contextmanager
def warm_trainer(recipe: Recipe, warmup: int) -> Iterator[Trainer]:
    """A trainer for ``recipe`` in a temporary run directory, its modules in training mode, after
    ``warmup`` steps."""
    with tempfile.TemporaryDirectory() as run_dir:
        prepared = prepare(recipe)
        trainer = make_trainer(prepared, Path(run_dir), progress=False)
        for module in prepared.model.modules().values():
            module.train()
        for _ in range(warmup):
            trainer.train_step()
        yield trainer


def measure_steps(recipe: Recipe, warmup: int, steps: int, backend: str, flops: bool) -> dict[str, Any]:
    """Median step time (and process CPU time) after ``warmup`` steps, images/s, parameter counts,
    and with ``flops`` the FLOPs of one more step; on CUDA the peak of allocated memory."""
    with compile_backend(backend), warm_trainer(recipe, warmup) as trainer:
        device = trainer.device
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = [timed_step(trainer, device) for _ in range(steps)]
        walls, cpus = [wall for wall, _ in times], [cpu for _, cpu in times]
        train = recipe.train
        step_seconds = statistics.median(walls)
        result: dict[str, Any] = {
            "batch_size": train.batch_size,
            "d_steps": train.d_steps,
            "steps_timed": steps,
            "step_seconds": step_seconds,
            "step_seconds_min": min(walls),
            "step_cpu_seconds": statistics.median(cpus),
            # every update draws a fresh batch: what the data pipeline must deliver
            "images_per_s": train.batch_size * train.batches_per_step / step_seconds,
            # one batch per step, as the reference implementation counts its images/s
            "batch_images_per_s": train.batch_size / step_seconds,
            "parameters": trainer.model.parameter_counts(),
        }
        if device.type == "cuda":
            result["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        if flops:
            result["flops_per_step"] = count_step_flops(trainer)
        return result
