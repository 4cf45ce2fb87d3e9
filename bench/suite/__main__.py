"""python -m bench.suite [--quick] [--threads N] [--output JSON] [--plot PNG] [--models ...] [--modes ...]

Runs the whole performance suite (see the package docstring and docs/performance.md), writes the JSON
result and the scaling plot, and prints a summary table with issue 8's targets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import attrs

from . import report
from .anchor import REFERENCE, measure_reference
from .configs import (
    BASELINE,
    FULL,
    MODELS,
    MODES,
    QUICK,
    SCALING_MODEL,
    SCALING_MODES,
    SCALING_OVERRIDES,
    Effort,
    ModelSpec,
)
from .evaluation import evaluation_rates
from .isolation import MeasurementFailed, isolated, preload
from .machine import FULL_SHAPES, QUICK_SHAPES, load_average, measure_machine
from .pipeline import pipeline_rate
from .revnet import revnet_memory
from .scaling import plot, sweep
from .training import load_recipe, measure_steps, with_threads

BENCH = Path(__file__).resolve().parents[1]
SCALING_WARMUP = 1


def _log(message: str) -> None:
    print(f"[suite] {message}", file=sys.stderr, flush=True)


def _step_overrides(spec: ModelSpec, effort: Effort) -> tuple[str, ...]:
    data = (spec.step_data,) if spec.step_data else ()
    return (*spec.overrides, *data, *(spec.quick if effort.quick else ()))


@attrs.define
class Suite:
    """One run of the suite: every measurement goes through :meth:`attempt`."""

    effort: Effort
    threads: int  # torch threads in every measurement process; 0: torch's default
    skipped_precisions: dict[str, str] = attrs.field(factory=dict)  # precision -> why it is not measured

    def attempt(self, what: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        """``fn(*args)`` in its own process: its dict plus peak memory, or ``{"error": traceback}``."""
        start = time.perf_counter()
        try:
            outcome = isolated(with_threads, self.threads, fn, *args)
        except MeasurementFailed as failure:
            _log(f"{what}: FAILED\n{failure}")
            return {"error": str(failure)}
        step = f"{outcome.value['step_seconds']:.3f} s/step, " if "step_seconds" in outcome.value else ""
        _log(f"{what}: {step}measured in {time.perf_counter() - start:.0f} s")
        return {**outcome.value, "peak_rss_bytes": outcome.peak_rss_bytes, "rss_start_bytes": outcome.rss_start_bytes}

    def steps(self, what: str, recipe: Any, warmup: int, steps: int, flops: bool) -> dict[str, Any]:
        return self.attempt(what, measure_steps, recipe, warmup, steps, self.effort.compile_backend, flops)

    def model(self, spec: ModelSpec, modes: list[str], limits: dict[str, Any]) -> dict[str, Any]:
        effort = self.effort
        overrides = _step_overrides(spec, effort)
        entry: dict[str, Any] = {"recipe": spec.recipe, "overrides": list(overrides), "modes": {}}
        for name in modes:
            mode = MODES[name]
            if mode.precision in self.skipped_precisions:
                entry["modes"][name] = {"skipped": self.skipped_precisions[mode.precision]}
                continue
            recipe = load_recipe(spec.recipe, (*overrides, *mode.overrides()))
            count = not mode.compile and "flops_per_step" not in entry  # counted once, on an eager step
            row = self.steps(f"{spec.name} {name}", recipe, effort.warmup_steps, effort.steps(spec), count)
            if "error" not in row:
                entry["parameters"] = row.pop("parameters")
                if count:
                    entry["flops_per_step"] = row.pop("flops_per_step")
            entry["modes"][name] = row
        for name, row in entry["modes"].items():
            report.add_rates(row, entry.get("flops_per_step"), limits, MODES[name].precision)
        report.add_speedups(entry["modes"])

        pipeline_overrides = (*spec.overrides, *(spec.quick if effort.quick else ()))
        pipeline = self.attempt(
            f"{spec.name} data pipeline", pipeline_rate, spec.recipe, pipeline_overrides, effort.pipeline_batches, effort.jpeg_images
        )
        best = report.fastest(entry["modes"])
        if best is not None and "images_per_s" in pipeline:
            demand = entry["modes"][best]["images_per_s"]
            pipeline.update(demand_images_per_s=demand, demand_mode=best, margin=pipeline["images_per_s"] / demand)
        entry["data_pipeline"] = pipeline

        eval_recipe = load_recipe(spec.recipe, (*overrides, *MODES[BASELINE].overrides()))
        entry["evaluation"] = self.attempt(f"{spec.name} evaluation", evaluation_rates, eval_recipe, effort.images(spec))
        return entry

    def scaling(self, plot_path: Path) -> dict[str, Any]:
        spec = next(s for s in MODELS if s.name == SCALING_MODEL)
        base = (*_step_overrides(spec, self.effort), *SCALING_OVERRIDES)
        rows = []
        reasons = {mode: self.skipped_precisions.get(MODES[mode].precision) for mode in SCALING_MODES}
        skipped = {mode: reason for mode, reason in reasons.items() if reason is not None}
        for point in sweep(self.effort, tuple(mode for mode in SCALING_MODES if mode not in skipped)):
            recipe = load_recipe(spec.recipe, (*base, *point.overrides(), *MODES[point.mode].overrides()))
            what = f"scaling {point.mode} batch {point.batch_size} at {point.resolution}px"
            row = self.steps(what, recipe, SCALING_WARMUP, self.effort.scaling_timed_steps, False)
            row.pop("parameters", None)
            rows.append({**row, "axis": point.axis, "mode": point.mode, "batch_size": point.batch_size, "resolution": point.resolution})
        plot(rows, f"{SCALING_MODEL} ({', '.join(SCALING_OVERRIDES)}): training step time", plot_path)
        return {"model": SCALING_MODEL, "overrides": list(base), "points": rows, "skipped_modes": skipped, "plot": str(plot_path)}

    def anchor(self, models: dict[str, Any], checkout: Path | None) -> dict[str, Any]:
        if checkout is None:
            reference = dict(REFERENCE)
        else:
            steps = self.effort.timed_steps or 5
            reference = self.attempt("reference implementation", measure_reference, checkout, self.effort.warmup_steps, steps)
        anchor: dict[str, Any] = {"reference": reference}
        entry = models.get(report.ANCHOR_MODEL, {})
        best = report.fastest(entry.get("modes", {}))
        if best is None or "batch_images_per_s" not in reference:
            return anchor
        row = entry["modes"][best]
        anchor["ours"] = {
            "mode": best,
            "parameters": entry["parameters"],
            "flops_per_step": entry.get("flops_per_step"),
            **{key: row[key] for key in ("step_seconds", "step_cpu_seconds", "batch_images_per_s")},
        }
        anchor["speedup"] = row["batch_images_per_s"] / reference["batch_images_per_s"]
        if "step_cpu_seconds" in reference:
            anchor["cpu_time_speedup"] = reference["step_cpu_seconds"] / row["step_cpu_seconds"]
        return anchor


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.splitlines()[2])
    parser.add_argument("--quick", action="store_true", help="tiny models and steps: checks the suite quickly, measures nothing real")
    parser.add_argument("--threads", type=int, help="torch threads per measurement (default: torch's default; 1 with --quick)")
    parser.add_argument("--output", type=Path, help="JSON result (default bench/results/suite.json, suite-quick.json with --quick)")
    parser.add_argument("--plot", type=Path, help="scaling plot (default bench/plots/step_scaling.png, step_scaling-quick.png with --quick)")
    parser.add_argument("--models", nargs="+", choices=[spec.name for spec in MODELS], help="only these models")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), help="only these modes (default: all)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the batch-size / resolution sweep and its plot")
    parser.add_argument("--no-revnet", action="store_true", help="skip bench/revnet_memory.py")
    parser.add_argument("--reference-checkout", type=Path, help="a checkout of the anchor's reference implementation to time in this run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    effort = QUICK if args.quick else FULL
    threads = args.threads if args.threads is not None else (1 if args.quick else 0)
    suite = Suite(effort, threads)
    suffix = "-quick" if args.quick else ""
    output = args.output or BENCH / "results" / f"suite{suffix}.json"
    plot_path = args.plot or BENCH / "plots" / f"step_scaling{suffix}.png"
    specs = [spec for spec in MODELS if args.models is None or spec.name in args.models]
    modes = args.modes or list(MODES)
    start_load = load_average()
    preload(["bench.suite.training", "bench.suite.pipeline", "bench.suite.evaluation", "bench.suite.machine", "bench.suite.revnet"])

    machine = suite.attempt("machine limits", measure_machine, QUICK_SHAPES if args.quick else FULL_SHAPES)
    if "error" in machine:
        return 1
    suite.skipped_precisions = machine["skipped_precisions"]
    for precision, reason in suite.skipped_precisions.items():
        _log(f"{precision}: {reason}")
    models = {spec.name: suite.model(spec, modes, machine["limits"]) for spec in specs}
    anchor = suite.anchor(models, args.reference_checkout)
    scaling = None if args.no_scaling else suite.scaling(plot_path)
    revnet = None if args.no_revnet else suite.attempt("RevNet memory (bench/revnet_memory.py)", revnet_memory, effort.revnet_arguments)

    result = {
        "command": " ".join(["python -m bench.suite", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "machine": machine["machine"],
        "skipped_precisions": machine["skipped_precisions"],
        "limits": machine["limits"],
        "models": models,
        "anchor": anchor,
        "scaling": scaling,
        "revnet": revnet,
        "load_average": {"start": start_load, "end": load_average()},
    }
    result["targets"] = report.targets(models, anchor, revnet or {})
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(report.table(result))
    if args.quick:
        print("\n--quick: tiny models and few steps; these figures check the suite, they measure nothing")
    print(f"wrote {output}" + ("" if scaling is None else f" and {plot_path}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
