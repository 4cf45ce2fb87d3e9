"""Metrics from a recipe: building the metrics a recipe names, computing them on a subject, recording the
results in ``metrics.jsonl`` and showing them as a console table. The protocol a metric plugin
implements is :mod:`bifamily.metric_interfaces`. Each computation gives one record::

    {"step": 600, "metric": "probe", "probe_top1": 0.83, "probe_top5": 1.0, "settings": {...}}

"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import attrs
from torch import nn
from torch.utils.data import Dataset

from bifamily.config import SAFE_NAME_RULE, is_safe_name
from bifamily.context import BuildContext
from bifamily.errors import BifamilyError, PluginError, RecipeError
from bifamily.evaluation.features import require_labels
from bifamily.evaluation.stop_when import IMPROVES, Target
from bifamily.interfaces import Encoder, LatentPrior
from bifamily.metric_interfaces import Direction, Metric, MetricContext, MetricResult, Subject
from bifamily.plugins import PluginSet
from bifamily.recipe import Recipe
from bifamily.rundir import EVAL_GRIDS, METRICS_FILE, RunWriter

if TYPE_CHECKING:  # importing it loads clean-fid, which takes seconds
    from bifamily.evaluation.feature_networks import FeatureNetwork

_RESERVED_VALUE_NAMES = {"step", "metric", "settings", "details"}


@attrs.frozen
class Record:
    """One metric computation at one step."""

    step: int
    metric: str
    result: MetricResult

    def to_json(self) -> dict[str, Any]:
        record = {"step": self.step, "metric": self.metric, **self.result.values, "settings": self.result.settings}
        return {**record, "details": self.result.details} if self.result.details else record


# -- building ---------------------------------------------------------------------------------------


def metric_context(recipe: Recipe, plugins: PluginSet, model: BuildContext) -> MetricContext:
    def feature_network(name: str, key: str) -> FeatureNetwork:
        entry = plugins.registry.get("feature_network", name)
        if entry is None:
            installed = ", ".join(plugins.registry.names("feature_network")) or "none"
            raise RecipeError([f"{key}: unknown feature network {name!r} (installed: {installed})"])
        config = recipe.feature_networks.get(name) or entry.config_cls()
        return _built(f"$.feature_networks.{name}", lambda: config.build(model))

    return MetricContext(
        model=model,
        seed=recipe.run.seed,
        train_samples=recipe.eval.train_samples,
        test_samples=recipe.eval.test_samples,
        feature_network=feature_network,
    )


def build_metrics(
    recipe: Recipe, plugins: PluginSet, names: list[str], model: BuildContext, key: str = "$.eval.metrics"
) -> dict[str, Metric]:
    """Build the named metrics with the recipe's [metrics.NAME] settings (defaults where none are given);
    ``key`` is the recipe key that named them, for errors."""
    ctx = metric_context(recipe, plugins, model)
    metrics: dict[str, Metric] = {}
    problems: list[str] = []
    for name in names:
        entry = plugins.registry.get("metric", name)
        if entry is None:
            installed = ", ".join(plugins.registry.names("metric")) or "none"
            problems.append(f"{key}: unknown metric {name!r} (installed: {installed})")
            continue
        config = recipe.metrics.get(name) or entry.config_cls()
        try:
            metrics[name] = _built(f"$.metrics.{name}", lambda: config.build(ctx))
        except RecipeError as exc:
            problems.extend(exc.problems)
    if problems:
        raise RecipeError(problems, source=recipe.source)
    return metrics


def _built(key: str, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except BifamilyError:
        raise
    except Exception as exc:  # a plugin's own failure: name its recipe key, keep it one line
        raise RecipeError([f"{key}: build failed: {type(exc).__name__}: {exc}"]) from exc


def best_direction(best: str, metrics: Mapping[str, Metric]) -> Direction:
    """The direction of value ``best`` among the metrics' values; a RecipeError if none reports it."""
    directions = _value_directions(metrics)
    if best not in directions:
        raise RecipeError([_not_reported("$.eval.best", best, directions)])
    return directions[best]


def target_problems(targets: Iterable[Target], metrics: Mapping[str, Metric]) -> list[str]:
    """What is wrong with ``eval.stop_when``'s targets for these scheduled metrics: values none of them
    reports, comparisons that point away from the way a value improves."""
    directions = _value_directions(metrics)
    problems = []
    for target in targets:
        way = directions.get(target.name)
        if way is None:
            problems.append(_not_reported("$.eval.stop_when", target.name, directions))
        elif IMPROVES[target.operator] != way:
            better, right = ("higher", ">=") if way == "max" else ("lower", "<=")
            problems.append(
                f"$.eval.stop_when: {target.name} is better {better}: write '{target.name} {right} {target.value:g}'"
            )
    return problems


def _value_directions(metrics: Mapping[str, Metric]) -> dict[str, Direction]:
    return {name: way for metric in metrics.values() for name, way in metric.directions.items()}


def _not_reported(key: str, name: str, directions: Mapping[str, Direction]) -> str:
    offered = ", ".join(sorted(directions)) or "none"
    return f"{key}: {name!r} is not a value of the metrics in $.eval.metrics (they report: {offered})"


def data_key(recipe: Recipe) -> dict[str, Any]:
    """The resolved [data] section, with a relative ``root`` made absolute: two runs that name
    different folders by the same relative path must not share cached reference statistics."""
    data = recipe.to_dict()["data"]
    if isinstance(data.get("root"), str):
        data = {**data, "root": str(Path(data["root"]).resolve())}
    return data


def evaluated(data: Dataset) -> Dataset:
    """The split evaluation reads in place of ``data``: a data set that trains on unlabelled images
    (STL-10's unlabelled split) names its labelled counterpart as ``for_evaluation``."""
    return getattr(data, "for_evaluation", data)


def make_subject(recipe: Recipe, generator: nn.Module, encoder: Encoder, prior: LatentPrior,
                 context: BuildContext, train_data: Dataset, test_data: Dataset) -> Subject:
    return Subject(
        generator=generator,
        encoder=encoder,
        prior=prior,
        context=context,
        train_data=evaluated(train_data),
        test_data=test_data,
        data_key=data_key(recipe),
        batch_size=recipe.eval.batch_size,
        seed=recipe.run.seed,
    )


# -- computing and recording ------------------------------------------------------------------------


def check_labels(metrics: Mapping[str, Metric], train_data: Dataset, test_data: Dataset) -> None:
    """Refuse, before any work, metrics that need labels on a data set without them."""
    for name, metric in metrics.items():
        if metric.needs_labels:
            require_labels(evaluated(train_data), f"metric {name!r}")
            require_labels(test_data, f"metric {name!r}")


def evaluate(metrics: Mapping[str, Metric], subject: Subject, step: int) -> list[Record]:
    """Compute every metric on ``subject`` (no gradients, networks untouched)."""
    check_labels(metrics, subject.train_data, subject.test_data)
    records = []
    for name, metric in metrics.items():
        result = metric.compute(subject)
        clash = _RESERVED_VALUE_NAMES & set(result.values)
        if clash:
            raise ValueError(f"metric {name!r} reported reserved value name(s) {sorted(clash)}")
        records.append(Record(step, name, result))
    return records


def write_records(writer: RunWriter, records: list[Record]) -> None:
    """Append the records to metrics.jsonl and save their grids as ``eval/METRIC-IMAGE/step-N.png``."""
    for record in records:
        unsafe = [name for name in record.result.images if not is_safe_name(name)]
        if unsafe:  # image names become folder names
            raise PluginError(f"metric {record.metric!r} named an image {unsafe[0]!r}: use {SAFE_NAME_RULE}")
    for record in records:
        writer.append(METRICS_FILE, record.to_json())
        for image_name, grid in record.result.images.items():
            writer.save_grid(f"{EVAL_GRIDS}/{record.metric}-{image_name}", record.step, grid.images, nrow=grid.nrow)


def format_table(records: list[Record]) -> str:
    """One row per value: step, metric, value name, number."""
    rows = [("step", "metric", "value", "result")]
    for record in records:
        for name, value in record.result.values.items():
            rows.append((str(record.step), record.metric, name, _number(value)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    numeric = (0, 3)  # right-aligned columns
    lines = [
        "  ".join(cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"

