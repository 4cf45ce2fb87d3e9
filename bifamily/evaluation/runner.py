"""Running metrics on a model's weights: the schedule during training, the end-of-run report, and
``bifamily eval``, all through :class:`Evaluator`.

A run's schedule (``[eval] every``) computes the scheduled metrics on the EMA weights, records them
in ``metrics.jsonl``, shows them as a table and keeps the best snapshot by ``eval.best``. The
end-of-run report computes the ``[eval] report`` metrics on the EMA encoder and on the same encoder at
initialisation, and the ``report_extra`` metrics once; it is one ``metrics.jsonl`` record
(``"metric": "report"``) and a few lines, each written by its metric (``report_line``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs
from torch import nn
from torch.utils.data import Dataset

from bifamily.build import build_model
from bifamily.checkpoint.manager import CheckpointManager
from bifamily.context import BuildContext
from bifamily.evaluation.best import BestSnapshot
from bifamily.evaluation.metrics import Record, evaluate, format_table, make_subject, write_records
from bifamily.evaluation.stop_when import all_met
from bifamily.interfaces import Encoder, LatentPrior
from bifamily.metric_interfaces import Direction, Metric, Subject
from bifamily.recipe import Recipe
from bifamily.rundir import METRICS_FILE, RunWriter
from bifamily.runlog import REPORT

_results = logging.getLogger(REPORT)

REPORT_RECORD = "report"  # the "metric" of the end-of-run report's metrics.jsonl record
INITIAL = "_init"  # suffix of the report's values on the encoder at initialisation


@attrs.define
class Evaluator:
    """Metrics on the weights of one model: its prior, build context and data splits are fixed; the
    generator and encoder evaluated are given per call."""

    recipe: Recipe
    prior: LatentPrior
    context: BuildContext
    train_data: Dataset
    test_data: Dataset

    def subject(self, generator: nn.Module, encoder: Encoder) -> Subject:
        return make_subject(
            self.recipe, generator, encoder, self.prior, self.context, self.train_data, self.test_data
        )

    def compute(self, metrics: Mapping[str, Metric], generator: nn.Module, encoder: Encoder, step: int) -> list[Record]:
        return evaluate(metrics, self.subject(generator, encoder), step)

    def report(
        self,
        compared: Mapping[str, Metric],
        once: Mapping[str, Metric],
        generator: nn.Module,
        encoder: Encoder,
        step: int,
        computed: Sequence[Record] = (),
    ) -> Report:
        """The end-of-run report: ``compared`` on ``encoder`` and on the same encoder at initialisation
        (rebuilt from the recipe's seed), ``once`` on the EMA weights; results in ``computed`` (the
        schedule's at this step, same settings) are reused."""
        initial_encoder = build_model(self.recipe, self.context).encoder.to(self.context.device).eval()
        metrics = {**compared, **once}
        reused = {r.metric: r for r in computed if r.metric in metrics}
        pending = {name: metric for name, metric in metrics.items() if name not in reused}
        trained = {**reused, **{r.metric: r for r in self.compute(pending, generator, encoder, step)}}
        initial = {r.metric: r for r in self.compute(compared, generator, initial_encoder, step)}
        return Report(step, {name: trained[name] for name in metrics}, initial, metrics)


@attrs.frozen
class Report:
    """The end-of-run report: each metric's record on the trained weights and, for the compared metrics,
    on the encoder at initialisation."""

    step: int
    trained: dict[str, Record]
    initial: dict[str, Record]
    metrics: Mapping[str, Metric]

    def record(self) -> dict[str, Any]:
        """One metrics.jsonl record: every value, the compared ones also at initialisation (suffix ``_init``),
        and each metric's settings (the same for both encoders) and details (the trained weights')."""
        record: dict[str, Any] = {"step": self.step, "metric": REPORT_RECORD}
        for name, trained in self.trained.items():
            record.update(trained.result.values)
            if name in self.initial:
                record.update({f"{key}{INITIAL}": value for key, value in self.initial[name].result.values.items()})
        record["settings"] = {name: r.result.settings for name, r in self.trained.items()}
        details = {name: r.result.details for name, r in self.trained.items() if r.result.details}
        return {**record, "details": details} if details else record

    def lines(self) -> list[str]:
        """Each metric's line: its ``report_line`` where it has one, else its values."""
        lines = []
        for name, trained in self.trained.items():
            values = trained.result.values
            initial = self.initial[name].result.values if name in self.initial else None
            report_line: Callable[..., str] | None = getattr(self.metrics[name], "report_line", None)
            if report_line is not None:
                lines.append(report_line(values, initial))
            else:
                shown = ", ".join(f"{key} {value:.4g}" for key, value in values.items())
                lines.append(f"{name}: {shown}")
        return lines


class EvaluationSchedule:
    """The ``on_tick`` of a run with ``[eval] every``: the scheduled metrics on the EMA weights at every
    multiple of ``every`` and at the last step, recorded in metrics.jsonl, shown as a table, and the best
    snapshot kept by ``eval.best``. Installed on rank 0 only. Returns True when the values just computed
    reach every target of ``eval.stop_when`` (the run ends there).

    It reads the trainer's state, writer, checkpoints and rollback count, and writes nothing into them.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        metrics: Mapping[str, Metric],
        run_dir: Path,
        best: Direction | None,
        resumed_step: int | None,
    ):
        recipe = evaluator.recipe
        self.evaluator = evaluator
        self.metrics = metrics
        self.every, self.last = recipe.eval.every, recipe.run.steps
        self.best = BestSnapshot(run_dir, recipe.eval.best, best, resumed_step) if best is not None else None
        self.targets = recipe.eval.stop_targets
        self.step: int | None = None
        self.records: list[Record] = []
        self.rollbacks_seen: int | None = None  # the trainer's count at the first tick (resumed runs carry one)

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def records_at(self, step: int) -> list[Record]:
        """What the schedule computed at ``step`` (nothing if it did not run there)."""
        return self.records if self.step == step else []

    def __call__(self, trainer: Any) -> bool:
        self._follow_rollbacks(trainer.state.rollbacks, trainer.checkpoints)
        step = trainer.state.step
        if not self.due(step):
            return False
        state = trainer.state
        self.step = step
        self.records = self.evaluator.compute(self.metrics, state.ema_generator.module, state.ema_encoder.module, step)
        write_records(trainer.writer, self.records)
        _results.info(format_table(self.records))
        if self.best is not None:
            self._keep_best(step, state.snapshot_modules(), trainer.settings.snapshot_metadata, trainer.checkpoints)
        return self._targets_reached(step)

    def _targets_reached(self, step: int) -> bool:
        values = {name: value for record in self.records for name, value in record.result.values.items()}
        if not self.targets or not all_met(self.targets, values):
            return False
        reached = ", ".join(f"{target.name} {values[target.name]:.4g} {target.operator} {target.value:g}" for target in self.targets)
        _results.info(f"stop_when reached at step {step} ({reached}): the run ends here")
        return True

    def _follow_rollbacks(self, rollbacks: int, checkpoints: CheckpointManager) -> None:
        """After a guard rollback to the latest checkpoint, drop the bests of the abandoned steps."""
        if self.rollbacks_seen is not None and rollbacks != self.rollbacks_seen and self.best is not None:
            self.best.rewind(checkpoints.latest_step() or 0)
        self.rollbacks_seen = rollbacks

    def _keep_best(
        self, step: int, modules: dict[str, nn.Module], metadata: dict[str, str], checkpoints: CheckpointManager
    ) -> None:
        assert self.best is not None
        name = self.best.value_name
        value = next(r.result.values[name] for r in self.records if name in r.result.values)
        checkpointed = checkpoints.latest_step()
        if self.best.offer(value, step, modules, metadata, checkpointed if checkpointed is not None else -1):
            _results.info(f"best {name} so far ({value:.4f} at step {step}): {self.best.path}")


def write_report(writer: RunWriter, report: Report) -> dict[str, Any]:
    """Append the report's record to metrics.jsonl; the record."""
    record = report.record()
    writer.append(METRICS_FILE, record)
    return record
