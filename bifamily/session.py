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
from typing import Any, Sequence

import attrs
import torch

from bifamily import __version__
from bifamily.allocator import keep_freed_memory
from bifamily.build import Model, build_components, build_model
from bifamily.checkpoint.snapshot import snapshot_metadata
from bifamily.display_subset import display_images
from bifamily.distributed import World, resolve_device
from bifamily.errors import BifamilyError, CheckpointError
from bifamily.evaluation.best import BestSnapshot
from bifamily.evaluation.metrics import (
    Direction,
    Metric,
    Record,
    evaluate,
    format_table,
    make_subject,
    write_records,
)
from bifamily.plugins import PluginSet
from bifamily.preflight import Checked, preflight
from bifamily.preflight import open_data as open_data  # where bench scripts import it from
from bifamily.precision import spectral_norm_in_fp32
from bifamily.randomness import derive_seed
from bifamily.recipe import REPORT_METRICS, Recipe
from bifamily.rundir import METRICS_FILE, RunDir, RunWriter, latest_run_dir, new_run_dir
from bifamily.runlog import REPORT, ROOT, ProgressLines, file_log
from bifamily.tensorboard_events import TensorBoardEvents
from bifamily.train import RECON_SIZE, Trainer, make_state

_notes, _results = logging.getLogger(ROOT), logging.getLogger(REPORT)


@attrs.define
class Prepared:
    recipe: Recipe
    model: Model
    train_data: Any
    test_data: Any
    scheduled: dict[str, Metric] = attrs.field(factory=dict)  # run every `eval.every` steps
    report: dict[str, Metric] = attrs.field(factory=dict)  # the end-of-run report's (empty: no report)
    best: Direction | None = None  # direction of `eval.best`, when a best snapshot is kept


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
    return Prepared(
        recipe, model, checked.train_data, checked.test_data,
        scheduled=checked.scheduled, report=checked.report, best=checked.best,
    )


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


def run_training(
    prepared: Prepared, run_dir: Path, *, resume: bool, world: World = World(), progress: bool = True
) -> dict[str, Any]:
    """Train in ``run_dir`` (from its latest checkpoint when ``resume``) and return the report.

    Rank 0 writes RUN_DIR/log.txt, a progress line every ``run.log_every`` steps (``progress``: a
    progress bar shows them on the terminal instead) and, with ``run.tensorboard``, TensorBoard events.
    """
    recipe, model = prepared.recipe, prepared.model
    state = make_state(recipe, model, prepared.train_data, world)
    trainer = Trainer(recipe, state, run_dir, world=world, progress=progress)
    if world.is_main and not resume:
        RunWriter(run_dir).create(recipe.to_dict())
    with contextlib.ExitStack() as outputs:
        if world.is_main:
            outputs.enter_context(file_log(run_dir, _headline(recipe, run_dir, resume, trainer.precision.name)))
        resumed_step = _resume(trainer, run_dir, world) if resume else None
        if world.is_main:
            _follow_run(trainer, outputs)
        recon = display_images(prepared.test_data, RECON_SIZE, derive_seed(recipe.run.seed, "reconstruction grid"))
        schedule = ScheduledEvaluation(prepared, run_dir, resumed_step) if prepared.scheduled and world.is_main else None
        trainer.fit(recon, schedule)
        report: dict[str, Any] = {"run_dir": str(run_dir), "step": state.step}
        if world.is_main and prepared.report:
            final = schedule.records if schedule is not None and schedule.step == state.step else []
            record = probe_report(prepared, state.ema_generator.module, state.ema_encoder.module, state.step, final)
            trainer.writer.append(METRICS_FILE, record)
            report.update({key: value for key, value in record.items() if key not in ("step", "metric", "settings")})
        if world.is_main:
            for line in report_lines(report):
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
    step = trainer.resume(latest)  # verifies the checkpoint before anything is appended
    if world.is_main:
        trainer.checkpoints.repair_pointer(latest)
        _notes.info(f"resumed {run_dir} at step {step}")
    return step


def _follow_run(trainer: Trainer, outputs: contextlib.ExitStack) -> None:
    """Rank 0: progress lines and, with ``run.tensorboard``, TensorBoard events from the run's records."""
    run = trainer.recipe.run
    trainer.writer.listeners.append(ProgressLines(run.steps, trainer.state.step))
    if run.tensorboard:
        events = TensorBoardEvents(trainer.writer.run_dir.tensorboard)
        outputs.callback(events.close)
        trainer.writer.listeners.append(events)


def report_lines(report: dict[str, Any]) -> list[str]:
    """The end-of-run report as the lines a run prints."""
    lines = [f"run directory: {report['run_dir']}"]
    for metric, what in (("probe", "linear probe"), ("knn", "k-NN")):
        if f"{metric}_top1" in report:
            lines.append(
                f"{what} top-1 on held-out images: EMA encoder {100 * report[f'{metric}_top1']:.1f}% "
                f"vs the same encoder at initialisation {100 * report[f'{metric}_top1_init']:.1f}%"
            )
    if "judge_recognisable" in report:
        lines.append(
            f"sample judge ({100 * report['judge_accuracy']:.1f}% accurate on held-out images): "
            f"{100 * report['judge_recognisable']:.1f}% of generated samples recognisable vs "
            f"{100 * report['judge_recognisable_real']:.1f}% of held-out real images; class coverage "
            f"{report['judge_coverage']:.2f} vs {report['judge_coverage_real']:.2f}; judge FD {report['judge_fd']:.2f}"
        )
    return lines


class ScheduledEvaluation:
    """The ``on_tick`` of a run with ``[eval] every``: metrics on the EMA weights at every multiple of
    ``every`` and at the last step, recorded in metrics.jsonl, shown as a table, and the best snapshot
    kept by ``eval.best``. Installed on rank 0 only."""

    def __init__(self, prepared: Prepared, run_dir: Path, resumed_step: int | None):
        self.prepared = prepared
        recipe = prepared.recipe
        self.every, self.last = recipe.eval.every, recipe.run.steps
        self.best = (
            BestSnapshot(run_dir, recipe.eval.best, prepared.best, resumed_step) if prepared.best is not None else None
        )
        self.step: int | None = None
        self.records: list[Record] = []
        self.rollbacks_seen: int | None = None  # the trainer's count at the first tick (resumed runs carry one)

    def _follow_rollbacks(self, trainer: Trainer) -> None:
        """After a guard rollback to the latest checkpoint, drop the bests of the abandoned steps."""
        if self.rollbacks_seen is not None and trainer.rollbacks != self.rollbacks_seen and self.best is not None:
            self.best.rewind(trainer.checkpoints.latest_step() or 0)
        self.rollbacks_seen = trainer.rollbacks

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def __call__(self, trainer: Trainer) -> None:
        self._follow_rollbacks(trainer)
        step = trainer.state.step
        if not self.due(step):
            return
        p = self.prepared
        subject = make_subject(
            p.recipe, trainer.state.ema_generator.module, trainer.state.ema_encoder.module, p.model.prior,
            p.model.context, p.train_data, p.test_data,
        )
        self.step, self.records = step, evaluate(p.scheduled, subject, step)
        write_records(trainer.writer, self.records)
        _results.info(format_table(self.records))
        if self.best is not None:
            self._keep_best(trainer, step)

    def _keep_best(self, trainer: Trainer, step: int) -> None:
        assert self.best is not None
        name = self.best.value_name
        value = next(r.result.values[name] for r in self.records if name in r.result.values)
        metadata = snapshot_metadata(self.prepared.recipe)  # the best snapshot adds the step
        checkpointed = trainer.checkpoints.latest_step()
        if self.best.offer(value, step, trainer.state.snapshot_modules(), metadata, checkpointed if checkpointed is not None else -1):
            _results.info(f"best {name} so far ({value:.4f} at step {step}): {self.best.path}")


def probe_report(
    prepared: Prepared,
    generator: torch.nn.Module,
    trained_encoder: torch.nn.Module,
    step: int,
    final_records: Sequence[Record] = (),
) -> dict[str, Any]:
    """The end-of-run report as one metrics.jsonl record: the report metrics (linear probe, k-NN) of the
    trained (EMA) encoder, ``probe_top1``, next to the same encoder at initialisation, ``probe_top1_init``,
    and every value of the ``eval.report_extra`` metrics, computed once on the EMA weights.

    Results the schedule computed at this step (same metrics, same settings) are reused, not recomputed.
    """
    recipe, model = prepared.recipe, prepared.model
    ctx = model.context
    initial_encoder = build_model(recipe, ctx).encoder.to(ctx.device).eval()
    reused = {r.metric: r.result for r in final_records if r.metric in prepared.report}
    record: dict[str, Any] = {"step": step, "metric": "report"}
    settings: dict[str, Any] = {}
    for suffix, encoder in (("", trained_encoder), ("_init", initial_encoder)):
        subject = make_subject(recipe, generator, encoder, model.prior, ctx, prepared.train_data, prepared.test_data)
        names = [name for name in prepared.report if not suffix or name in REPORT_METRICS]
        pending = {name: prepared.report[name] for name in names if suffix or name not in reused}
        results = {r.metric: r.result for r in evaluate(pending, subject, step)}
        if not suffix:
            results = {**reused, **results}
        for name in names:
            if name in REPORT_METRICS:
                record[f"{name}_top1{suffix}"] = results[name].values[f"{name}_top1"]
            else:
                record.update(results[name].values)
            settings[name] = results[name].settings  # the same for both encoders
    return {**record, "settings": settings}
