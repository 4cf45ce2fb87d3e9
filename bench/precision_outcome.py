"""Does the precision change what a recipe learns? The same recipe over several seeds in each precision.

    python -m bench.precision_outcome                            # the quickstart, seeds 0-3, fp32 and bf16
    python -m bench.precision_outcome --seeds 8 --parallel 2     # more seeds, two runs at a time
    python -m bench.precision_outcome --recipe recipes/bigan.toml --set run.steps=800 --output /tmp/p.json

One run trains with one seed and one precision on its own (`bifamily run RECIPE --set run.seed=S --set
train.precision=P`, a subprocess with `--threads` torch threads, exactly as a user runs it). Single
runs of a GAN spread widely from seed to seed, and two precisions of the same seed follow different
trajectories after the first rounding difference, so a precision effect shows only in the means over
seeds. For each run the benchmark reads the end-of-run report (EMA-encoder probe and k-NN, and the
same encoder at initialisation) and the mean losses over the last quarter of the run; it prints each
precision's mean and standard deviation, the difference of the means and its standard error, and
writes all of it to bench/results/precision_outcome.json (or `--output`). A run directory that already
holds a report is read again, not retrained, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import result_file
from bench.run_reports import mean_sd, read_report, train_run

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "precision_outcome.json"
RECIPE = "recipes/quickstart.toml"
MEASURES = ("probe_top1", "knn_top1", "probe_gain", "loss_d", "loss_eg")


def run_command(args: argparse.Namespace, precision: str, seed: int | str) -> list[str]:
    overrides = [f"--set={item}" for item in args.set]
    return [
        "bifamily", "run", args.recipe, "--set", f"run.seed={seed}", "--set", f"train.precision={precision}",
        *overrides, "--out", str(run_dir(args, precision, seed)), "--no-progress",
    ]


def run_dir(args: argparse.Namespace, precision: str, seed: int | str) -> Path:
    return args.runs / f"{precision}-seed{seed}"


def train(args: argparse.Namespace, precision: str, seed: int) -> float | None:
    """Train one run (unless it has a report already); its wall-clock seconds, None when reused."""
    return train_run(run_command(args, precision, seed), run_dir(args, precision, seed), args.threads)


def outcome(folder: Path) -> dict[str, float]:
    """Probe and k-NN of the report (percent) and the mean losses over the last quarter of the steps."""
    report = read_report(folder)
    if report is None or "probe_top1" not in report:
        raise SystemExit(f"error: {folder}: no end-of-run probe report (the recipe needs eval.report and labels)")
    stats = [json.loads(line) for line in (folder / "stats.jsonl").read_text().splitlines() if line.strip()]
    last_step = stats[-1]["step"]
    tail = [s for s in stats if s["step"] > 0.75 * last_step]
    return {
        "probe_top1": 100 * report["probe_top1"],
        "probe_top1_init": 100 * report["probe_top1_init"],
        "probe_gain": 100 * (report["probe_top1"] - report["probe_top1_init"]),
        "knn_top1": 100 * report["knn_top1"],
        "loss_d": statistics.fmean(s["loss_d"] for s in tail),
        "loss_eg": statistics.fmean(s["loss_eg"] for s in tail),
    }


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Mean and standard deviation per precision; for two precisions, the difference of the means
    (second minus first) and its standard error."""
    summary: dict[str, Any] = {}
    for precision, rows in runs.items():
        summary[precision] = {key: mean_sd([r[key] for r in rows]) for key in MEASURES}
    if len(runs) == 2:
        first, second = list(runs)
        summary["difference"] = {
            key: {
                "of_means": summary[second][key]["mean"] - summary[first][key]["mean"],
                "standard_error": math.sqrt(
                    summary[first][key]["sd"] ** 2 / len(runs[first]) + summary[second][key]["sd"] ** 2 / len(runs[second])
                ),
            }
            for key in MEASURES
        }
    return summary


def print_table(runs: dict[str, list[dict[str, float]]], summary: dict[str, Any]) -> None:
    print(f"{'precision':10}{'seed':>5}{'probe':>8}{'init':>7}{'gain':>7}{'k-NN':>7}{'loss_d':>8}{'loss_eg':>9}")
    for precision, rows in runs.items():
        for row in rows:
            print(
                f"{precision:10}{row['seed']:>5}{row['probe_top1']:>8.1f}{row['probe_top1_init']:>7.1f}"
                f"{row['probe_gain']:>+7.1f}{row['knn_top1']:>7.1f}{row['loss_d']:>8.3f}{row['loss_eg']:>9.3f}"
            )
        means = summary[precision]
        print(
            f"{precision + ' mean':15}{means['probe_top1']['mean']:>8.2f}{'':>7}{means['probe_gain']['mean']:>+7.2f}"
            f"{means['knn_top1']['mean']:>7.2f}{means['loss_d']['mean']:>8.3f}{means['loss_eg']['mean']:>9.3f}"
        )
    for key, value in summary.get("difference", {}).items():
        print(f"difference of means, {key}: {value['of_means']:+.2f} (standard error {value['standard_error']:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=RECIPE, help=f"Recipe to train (default {RECIPE}).")
    parser.add_argument("--precisions", default="fp32,bf16", help="Comma-separated train.precision values.")
    parser.add_argument("--seeds", type=int, default=4, help="Seeds 0..N-1 per precision.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads of each run (OMP_NUM_THREADS).")
    parser.add_argument("--parallel", type=int, default=2, help="Runs at a time.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="A recipe override for every run (repeatable).")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "precision-outcome", help="Folder of the run directories.")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Where the JSON result goes.")
    args = parser.parse_args()
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    jobs = [(precision, seed) for seed in range(args.seeds) for precision in precisions]
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        seconds = list(pool.map(lambda job: train(args, *job), jobs))
    runs: dict[str, list[dict[str, Any]]] = {precision: [] for precision in precisions}
    for (precision, seed), took in zip(jobs, seconds):
        row = {"seed": seed, **outcome(run_dir(args, precision, seed)), "training_seconds": took}
        runs[precision].append(row)
    summary = summarise(runs)
    print_table(runs, summary)
    reproduce = ["python", "-m", "bench.precision_outcome", "--recipe", args.recipe, "--precisions", ",".join(precisions),
                 "--seeds", str(args.seeds), "--threads", str(args.threads), *[f"--set={o}" for o in args.set]]
    report = {
        "benchmark": "the same recipe over seeds in each precision: end-of-run probe, k-NN and losses",
        "recipe": args.recipe,
        "reproduce": shlex.join(reproduce),
        "run_command": shlex.join(run_command(args, "PRECISION", "SEED")),
        "threads_per_run": args.threads,
        "runs": runs,
        "summary": summary,
    }
    result_file.write(args.output, report)


if __name__ == "__main__":
    main()
