"""From a recipe to a finished run: validate, build, prepare the run directory, train, report.

Everything that can fail because of user input (recipe, plugins, data paths, checkpoints) is checked
before the run directory is created, so a bad recipe never leaves a half-written run behind; the
recipe's checks are the pre-flight's (:mod:`bifamily.preflight`), made before the model is built for real.
Each rank of a distributed run goes through the same functions with its :class:`World`; rank 0 alone
creates the run directory, writes to it and runs the evaluations (scheduled ones and the final report);
evaluation has no collectives, so the other ranks go on and wait for rank 0 in the next step's
gradient all-reduce (within ``train.collective_timeout_s``).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import attrs
import torch

from bifamily import __version__
from bifamily.allocator import keep_freed_memory
from bifamily.build import Model, build_components
from bifamily.checkpoint.snapshot import snapshot_metadata
from bifamily.display_subset import display_images
from bifamily.distributed import World, resolve_device
from bifamily.errors import BifamilyError, CheckpointError
from bifamily.evaluation.runner import EvaluationSchedule, Evaluator, write_report
from bifamily.intervals import RECON_SIZE
from bifamily.plugins import PluginSet
from bifamily.preflight import Checked, EvaluationMetrics, preflight
from bifamily.spectral_norm import spectral_norm_in_fp32
from bifamily.randomness import derive_seed
from bifamily.recipe import Recipe
from bifamily.rundir import RunDir, RunWriter, latest_run_dir, new_run_dir
from bifamily.runlog import REPORT, ROOT, ProgressLines, file_log
from bifamily.tensorboard_events import TensorBoardEvents
from bifamily.train import Trainer
from bifamily.train_config import TrainSettings
from bifamily.train_state import load_state, make_state

_notes, _results = logging.getLogger(ROOT), logging.getLogger(REPORT)


@attrs.define
class Prepared:
    recipe: Recipe
    model: Model
    train_data: Any
    test_data: Any
    metrics: EvaluationMetrics = attrs.field(factory=EvaluationMetrics)

    def evaluator(self) -> Evaluator:
        return Evaluator(self.recipe, self.model.prior, self.model.context, self.train_data, self.test_data)


def prepare(
    recipe: Recipe, world: World | None = None, plugins: PluginSet | None = None, checked: Checked | None = None
) -> Prepared:
    """Check ``recipe`` with the pre-flight (``checked``: its result, when the caller ran it), then build
    every component for this process of ``world`` (default: one process on ``run.device``); raises
    before anything is written.

    In a world of several ranks, G and E get cross-replica batch norm through ``ctx.batch_norm``.
    """
    if world is None:
        world = World(device=resolve_device(recipe.run.device))
    if checked is None:
        checked = preflight(recipe, world, plugins)
    device = world.device
    if recipe.train.keep_freed_memory and device.type == "cpu":
        keep_freed_memory()
    model = build_components(recipe, checked.context)  # the pre-flight checked the same build on meta
    for module in model.modules().values():
        module.to(device)
        spectral_norm_in_fp32(module)
        if recipe.train.channels_last:
            module.to(memory_format=torch.channels_last)
    return Prepared(recipe, model, checked.train_data, checked.test_data, checked.metrics)


def train_settings(recipe: Recipe) -> TrainSettings:
    """What the trainer takes from ``recipe``."""
    r = recipe
    return TrainSettings(r.run, r.train, r.optim, r.ema, r.guard, snapshot_metadata(r))


def make_trainer(prepared: Prepared, run_dir: Path, *, world: World = World(), progress: bool = True) -> Trainer:
    """A trainer of the prepared model, its optimizers and data stream fresh, writing to ``run_dir``."""
    settings = train_settings(prepared.recipe)
    state = make_state(settings, prepared.model, prepared.train_data, world)
    return Trainer(state, settings, run_dir, world=world, progress=progress)


def choose_run_dir(recipe: Recipe, out: str | None, resume: bool) -> Path:
    root = Path(recipe.run.out_root)
    if out is not None:
        path = Path(out)
        has_checkpoint = RunDir(path).has_checkpoint()
        if has_checkpoint and not resume:
            raise BifamilyError(f"--out {path}: holds a run already; add --resume to continue it, or pick another folder")
        if resume and not has_checkpoint:
            raise CheckpointError(f"--resume: no checkpoint in {RunDir(path).checkpoints}")
        return path
    if resume:
        path = latest_run_dir(root, recipe.run.name)
        if path is None:
            raise CheckpointError(f"--resume: no run of {recipe.run.name!r} with a checkpoint under {root}/")
        return path
    return new_run_dir(root, recipe.run.name)


def run_checked(checked: Checked, out: str | None, *, resume: bool, progress: bool = True) -> dict[str, Any]:
    """Run a recipe that passed the pre-flight in this process of its world: build, choose the run
    directory (rank 0 decides), train, report."""
    recipe, world = checked.recipe, checked.world
    prepared = prepare(recipe, world, checked=checked)
    run_dir = world.on_main(lambda: choose_run_dir(recipe, out, resume))
    return run_training(prepared, run_dir, resume=resume, world=world, progress=progress)


def run_training(
    prepared: Prepared, run_dir: Path, *, resume: bool, world: World = World(), progress: bool = True
) -> dict[str, Any]:
    """Train in ``run_dir`` (from its latest checkpoint when ``resume``) and return the report.

    Rank 0 writes RUN_DIR/log.txt, a progress line every ``run.log_every`` steps (``progress``: a
    progress bar shows them on the terminal instead) and, with ``run.tensorboard``, TensorBoard events.
    """
    recipe, metrics = prepared.recipe, prepared.metrics
    trainer = make_trainer(prepared, run_dir, world=world, progress=progress)
    state = trainer.state
    if world.is_main and not resume:
        RunWriter(run_dir).create(recipe.to_dict())
    with contextlib.ExitStack() as outputs:
        if world.is_main:
            outputs.enter_context(file_log(run_dir, _headline(recipe, run_dir, resume, trainer.precision.name)))
        resumed_step = _resume(trainer, run_dir, world) if resume else None
        if world.is_main:
            _follow_run(trainer, outputs)
        recon = display_images(prepared.test_data, RECON_SIZE, derive_seed(recipe.run.seed, "reconstruction grid"))
        evaluator = prepared.evaluator()
        schedule = None
        if metrics.scheduled and world.is_main:
            schedule = EvaluationSchedule(evaluator, metrics.scheduled, run_dir, metrics.best, resumed_step)
        trainer.fit(recon, schedule, finish_checks_every=recipe.eval.every if recipe.eval.stop_targets else 0)
        report: dict[str, Any] = {"run_dir": str(run_dir), "step": state.step}
        if not world.is_main:
            return report
        lines = [f"run directory: {run_dir}"]
        if metrics.report:
            computed = schedule.records_at(state.step) if schedule is not None else []
            end_of_run = evaluator.report(
                metrics.report, metrics.report_extra, state.ema_generator.module, state.ema_encoder.module,
                state.step, computed,
            )
            record = write_report(trainer.writer, end_of_run)
            report.update({key: value for key, value in record.items() if key not in ("step", "metric", "settings")})
            lines += end_of_run.lines()
        for line in lines:
            _results.info(line)
    return report


def _headline(recipe: Recipe, run_dir: Path, resume: bool, precision: str) -> str:
    what = "resuming" if resume else "starting"
    chosen = f"{precision} (auto)" if recipe.train.precision == "auto" else precision
    return (
        f"bifamily {__version__}: {what} {recipe.run.name!r} ({recipe.run.steps} steps, {chosen}) in {run_dir}; "
        f"command: {shlex.join(sys.argv)}"
    )


def _resume(trainer: Trainer, run_dir: Path, world: World) -> int:
    """Load the latest checkpoint (every rank); its step."""
    latest = trainer.checkpoints.latest()
    if latest is None:
        damaged = RunDir(run_dir).step_entries()
        if not damaged:
            raise CheckpointError(f"--resume: no checkpoint in {RunDir(run_dir).checkpoints}")
        latest = damaged[-1]  # restoring it raises the error that names the damaged file
    writer = trainer.writer if world.is_main else None
    step = load_state(trainer.state, trainer.checkpoints, latest, writer)  # verified before anything is appended
    if world.is_main:
        trainer.checkpoints.repair_pointer(latest)
        _notes.info(f"resumed {run_dir} at step {step}")
    return step


def _follow_run(trainer: Trainer, outputs: contextlib.ExitStack) -> None:
    """Rank 0: progress lines and, with ``run.tensorboard``, TensorBoard events from the run's records."""
    run = trainer.settings.run
    trainer.writer.listeners.append(ProgressLines(run.steps, trainer.state.step))
    if run.tensorboard:
        events = TensorBoardEvents(trainer.writer.run_dir.tensorboard)
        outputs.callback(events.close)
        trainer.writer.listeners.append(events)
