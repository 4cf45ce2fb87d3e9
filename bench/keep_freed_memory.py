"""What `train.keep_freed_memory` buys on a CPU: training steps with glibc's default malloc thresholds
against steps with freed memory kept in the process.

    python -m bench.keep_freed_memory                       # four models, 3 repetitions, about 8 minutes on 2 cores
    python -m bench.keep_freed_memory --models quickstart --repeats 5 --threads 1

Each measurement is a fresh interpreter (the malloc setting is process-wide) that builds the model as
`bifamily run` does, takes 3 warm-up steps and times `--steps` more: median wall time, median process
CPU time (user + system), minor page faults and system time per step, peak resident size. The two
arms alternate within each repetition so that a slow stretch of a shared machine hits both. Reports
per model the medians over repetitions and the median of the per-repetition ratios (default / kept),
and writes bench/results/allocator.json (or `--output`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import result_file

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "allocator.json"
MODELS: dict[str, list[str]] = {  # recipe and overrides: each recipe in its fastest mode on this CPU
    "quickstart": ["recipes/quickstart.toml", "train.precision=bf16", "train.channels_last=true"],
    "bigbigan_small_fp32": ["recipes/bigbigan_small.toml", "train.precision=fp32", "train.channels_last=true"],
    "bigbigan_small_bf16": ["recipes/bigbigan_small.toml", "train.precision=bf16", "train.channels_last=true"],
    "mnist32_matched": ["recipes/bench/mnist32_matched.toml", "train.precision=fp32", "train.channels_last=true"],
}
ARMS = {"default": "train.keep_freed_memory=false", "kept": "train.keep_freed_memory=true"}


def measure(recipe_path: str, overrides: list[str], steps: int) -> dict[str, float]:
    """In this process: build, warm up, time ``steps`` training steps."""
    from bifamily.plugins import default_plugins
    from bifamily.recipe import load
    from bifamily.session import make_trainer, prepare

    recipe = load(recipe_path, default_plugins(), overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        prepared = prepare(recipe)
        trainer = make_trainer(prepared, Path(run_dir), progress=False)
        for _ in range(3):
            trainer.train_step()
        walls, cpus = [], []
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(steps):
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.train_step()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "step_seconds": statistics.median(walls),
        "step_cpu_seconds": statistics.median(cpus),
        "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
        "system_seconds_per_step": (after.ru_stime - before.ru_stime) / steps,
        "peak_rss_bytes": after.ru_maxrss * 1024,
    }


def run_arm(model: str, arm: str, args: argparse.Namespace) -> dict[str, float]:
    recipe, *overrides = MODELS[model]
    command = [sys.executable, "-m", "bench.keep_freed_memory", "--worker", "--steps", str(args.steps), recipe, *overrides, ARMS[arm]]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else dict(os.environ)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: {model} ({arm}) failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarise(repetitions: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Medians per arm over repetitions, and the median per-repetition ratio default / kept."""
    summary: dict[str, Any] = {}
    for arm in ARMS:
        summary[arm] = {key: statistics.median(r[arm][key] for r in repetitions) for key in repetitions[0][arm]}
    for key in ("step_seconds", "step_cpu_seconds"):
        summary[f"speedup_{key}"] = statistics.median(r["default"][key] / r["kept"][key] for r in repetitions)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"Comma-separated, of: {', '.join(MODELS)}.")
    parser.add_argument("--repeats", type=int, default=3, help="Repetitions of the (default, kept) pair per model.")
    parser.add_argument("--steps", type=int, default=8, help="Timed steps per measurement (after 3 warm-up steps).")
    parser.add_argument("--threads", type=int, default=0, help="Torch threads (0: torch's default).")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Where the JSON result goes.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        print(json.dumps(measure(rest[0], rest[1:], args.steps)))
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    results: dict[str, Any] = {}
    print(f"{'model':22}{'default s':>10}{'kept s':>9}{'speed-up':>9}{'CPU x':>7}{'faults/step default':>21}{'kept':>7}")
    for model in models:
        repetitions = [{arm: run_arm(model, arm, args) for arm in ARMS} for _ in range(args.repeats)]
        summary = summarise(repetitions)
        results[model] = {"recipe": MODELS[model], "repetitions": repetitions, "summary": summary}
        print(
            f"{model:22}{summary['default']['step_seconds']:>10.3f}{summary['kept']['step_seconds']:>9.3f}"
            f"{summary['speedup_step_seconds']:>9.2f}{summary['speedup_step_cpu_seconds']:>7.2f}"
            f"{summary['default']['page_faults_per_step']:>21.0f}{summary['kept']['page_faults_per_step']:>7.0f}",
            flush=True,
        )
    report = {
        "benchmark": "training steps with glibc's default malloc thresholds vs train.keep_freed_memory",
        "command": " ".join(["python", "-m", "bench.keep_freed_memory", *sys.argv[1:]]),
        "threads": args.threads or "torch default",
        "models": results,
    }
    result_file.write(args.output, report)


if __name__ == "__main__":
    main()
