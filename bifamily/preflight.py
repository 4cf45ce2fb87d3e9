"""The pre-flight: every check a run makes before it builds its model for real and allocates memory.

``bifamily run``, ``run --dry-run`` and ``validate`` all call :func:`preflight`, so what one refuses
the others refuse too. The checks go cheapest first, and every problem found is reported at once:

1. the recipe's structure, types and plugin names (when it is loaded: :func:`bifamily.recipe.load`);
2. what depends on the device and the number of processes: the batch splits into
   ``train.accumulation`` micro-steps on every rank, fp16 runs on CUDA only; the tensorboard
   package when the run writes events;
3. the data: both splits open (paths, files), the training split holds a batch;
4. the evaluation: ``eval.best`` and ``eval.stop_when`` name values of the scheduled metrics (the
   latter each compared the way it improves), the metrics build, the data
   has labels where a metric needs them;
5. the model, built on the meta device (shapes and parameter counts, no memory, no initial values):
   each component's own checks of the sizes its config decides, what each declares against the
   recipe, then a batch of two through G, E and D that proves the shapes agree end to end and that D
   gives every score the loss needs;
6. the memory: the weights a run must hold (weights, gradients, Adam's two moments, the EMA copies of
   G and E, in float32) fit in the device's memory.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

import attrs
import torch

from bifamily.batchnorm import batch_norm_for
from bifamily.build import Model, build_on_meta, make_context
from bifamily.context import BuildContext
from bifamily.distributed import World, config_problems, resolve_device
from bifamily.errors import BifamilyError, DataError, RecipeError
from bifamily.evaluation.metrics import best_direction, build_metrics, check_labels, target_problems
from bifamily.metric_interfaces import Direction, Metric
from bifamily.plugins import PluginSet, default_plugins
from bifamily.recipe import Recipe
from bifamily.tensorboard_events import missing_package_problems

T = TypeVar("T")


@attrs.define
class Checked:
    """What passed the pre-flight, for the run to use: the build context on the run's device, the
    model on the meta device, both data splits, and the metrics of the schedule and of the report."""

    recipe: Recipe
    world: World
    context: BuildContext
    meta_model: Model
    train_data: Any
    test_data: Any
    metrics: EvaluationMetrics = attrs.field(factory=lambda: EvaluationMetrics())


@attrs.frozen
class EvaluationMetrics:
    """The metrics a run computes, built: on its schedule, in its end-of-run report (``report`` on the
    trained encoder and the one at initialisation, ``report_extra`` once on the trained weights; no report
    when ``report`` is empty)."""

    scheduled: dict[str, Metric] = attrs.field(factory=dict)  # run every `eval.every` steps
    report: dict[str, Metric] = attrs.field(factory=dict)
    report_extra: dict[str, Metric] = attrs.field(factory=dict)
    best: Direction | None = None  # direction of `eval.best`, when a best snapshot is kept


def preflight(recipe: Recipe, world: World | None = None, plugins: PluginSet | None = None) -> Checked:
    """Check ``recipe`` for this process of ``world`` (default: one process on ``run.device``);
    raises one :class:`RecipeError` with every problem found, before anything is written."""
    if world is None:
        world = World(device=resolve_device(recipe.run.device))
    plugins = plugins or default_plugins()
    problems = config_problems(recipe.train, world.size, world.device)
    if recipe.run.tensorboard:
        problems += missing_package_problems()
    ctx = make_context(recipe, world.device, batch_norm=batch_norm_for(world.device, world.size))
    data = _attempt(lambda: _open_training_data(recipe, ctx), problems)
    metrics = _attempt(lambda: _metrics(recipe, plugins, ctx, data), problems)
    meta_model = _attempt(lambda: build_on_meta(recipe, ctx), problems)
    if meta_model is not None:
        problems += memory_problems(meta_model, world.device)
    if problems:
        raise RecipeError(problems, source=recipe.source)
    assert data is not None and metrics is not None and meta_model is not None
    return Checked(recipe, world, ctx, meta_model, *data, metrics=metrics)


FLOAT32_COPIES = 4  # weights, gradients and Adam's two moments; G and E add one EMA copy each
GIB = 2**30


def device_memory(device: torch.device) -> int:
    """Bytes of memory of ``device``: the GPU's, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_problems(model: Model, device: torch.device) -> list[str]:
    """A problem naming the largest component when the run's float32 weights alone cannot fit in the
    device's memory (activations come on top, so passing says little; failing is certain)."""
    counts = {name: sum(t.numel() for t in (*module.parameters(), *module.buffers())) for name, module in model.modules().items()}
    copies = {name: FLOAT32_COPIES + (name in ("generator", "encoder")) for name in counts}
    needed = 4 * sum(counts[name] * copies[name] for name in counts)
    available = device_memory(device)
    if needed <= available:
        return []
    largest = max(counts, key=counts.get)
    return [
        f"$.{largest}: the run's weights alone need {needed / GIB:,.1f} GiB (weights, gradients, Adam's moments "
        f"and EMA copies in float32; {largest} holds {counts[largest]:,} of the {sum(counts.values()):,} numbers), "
        f"more than the {available / GIB:,.1f} GiB of {device}"
    ]


def _attempt(check: Callable[[], T], problems: list[str]) -> T | None:
    """``check()``; or None, with the problems it raised added to ``problems``."""
    try:
        return check()
    except RecipeError as exc:
        problems.extend(exc.problems)
    except BifamilyError as exc:
        problems.extend(exc.lines())
    return None


def open_data(recipe: Recipe, ctx: BuildContext) -> tuple[Any, Any]:
    """The training and held-out splits of the recipe's data set."""
    data_config = recipe.components["data"]
    try:
        return data_config.build(ctx, "train"), data_config.build(ctx, "test")
    except BifamilyError:
        raise
    except Exception as exc:
        raise DataError(f"$.data: building data set {recipe.kinds['data']!r} failed: {type(exc).__name__}: {exc}") from exc


def _open_training_data(recipe: Recipe, ctx: BuildContext) -> tuple[Any, Any]:
    train_data, test_data = open_data(recipe, ctx)
    if len(train_data) < recipe.train.batch_size:
        raise DataError(
            f"$.train.batch_size: {recipe.train.batch_size} is larger than the training split "
            f"({len(train_data)} images)"
        )
    return train_data, test_data


def _metrics(recipe: Recipe, plugins: PluginSet, ctx: BuildContext, data: tuple[Any, Any] | None) -> EvaluationMetrics:
    """The run's metrics, built; refuses what cannot work before training starts. Without ``data`` (it did
    not open) the checks that need it are skipped."""
    ev = recipe.eval
    scheduled: dict[str, Metric] = {}
    best = None
    if ev.best and not ev.every:
        raise RecipeError([f"$.eval.best: {ev.best!r} needs scheduled metrics: set $.eval.every > 0"])
    if ev.stop_when and not ev.every:
        raise RecipeError([f"$.eval.stop_when: {ev.stop_when!r} needs scheduled metrics: set $.eval.every > 0"])
    if ev.every:
        if not ev.metric_names:
            raise RecipeError(["$.eval.metrics: $.eval.every is set but no metric is named"])
        scheduled = build_metrics(recipe, plugins, ev.metric_names, ctx)
        if data is not None:
            check_labels(scheduled, *data)
        if ev.best:
            best = best_direction(ev.best, scheduled)
        problems = target_problems(ev.stop_targets, scheduled)
        if problems:
            raise RecipeError(problems)
    if not ev.report_names or data is None or getattr(data[1], "num_classes", 0) == 0:  # off, or no labels
        return EvaluationMetrics(scheduled, best=best)
    report = build_metrics(recipe, plugins, ev.report_names, ctx, key="$.eval.report")
    extra = build_metrics(recipe, plugins, ev.report_extra_names, ctx, key="$.eval.report_extra")
    return EvaluationMetrics(scheduled, report, extra, best)
