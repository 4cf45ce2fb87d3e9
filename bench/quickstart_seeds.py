"""The quickstart over seeds: wall time, what the encoder learned and how recognisable the samples are.

    python -m bench.quickstart_seeds                       # seeds 0-3, fp32, 2 threads, one run at a time
    python -m bench.quickstart_seeds --recipe recipes/shapes_showcase.toml --seeds 0,1
    python -m bench.quickstart_seeds --skip-mnist --output /tmp/q.json

Each seed is one `bifamily run RECIPE --set run.seed=S --set train.precision="fp32"` (a subprocess with
`--threads` torch threads, exactly as a user runs it; fp32 is forced because the time budget must hold
on a CPU without bf16 in hardware). Its wall time is measured end to end, start-up and end-of-run
report included. From every value recorded at the last step (the report, metrics scheduled then, and
`bifamily eval` results added later, the latest winning) the table reads the EMA encoder's linear
probe and k-NN next to the same encoder at initialisation, and the sample judge's recognisability
(also as a share of the real images'), coverage, Fréchet distance and KID of the EMA generator's
samples; the last row gives the judge's figures for held-out real images. Runs go one at a time by
default, so each wall time is that of a machine running nothing else.

When the MNIST test split is present (`--mnist`, default ../shared/data/mnist), every seed also trains
the same recipe on MNIST through `bench/mnist_probe.py` and reports its encoder against its
initialisation and raw pixels. Writes bench/results/quickstart_seeds.json (or `--output`). A run
directory that already holds a report is read again, not retrained.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import result_file
from bench.run_reports import final_values, mean_sd, row_of, train_run

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "quickstart_seeds.json"
RECIPE = "recipes/quickstart.toml"
MNIST = REPO.parent / "shared" / "data" / "mnist"
COLUMNS = (  # (key in a row, heading, format)
    ("wall_seconds", "wall s", "{:.0f}"),
    ("probe_init", "probe init", "{:.1f}"),
    ("probe", "probe", "{:.1f}"),
    ("probe_gain", "gain", "{:+.1f}"),
    ("knn_init", "k-NN init", "{:.1f}"),
    ("knn", "k-NN", "{:.1f}"),
    ("recognisable", "recognisable %", "{:.1f}"),
    ("recognisable_ratio", "of real's", "{:.2f}"),
    ("coverage", "coverage", "{:.3f}"),
    ("fd", "judge FD", "{:.2f}"),
    ("kid", "judge KID", "{:.4f}"),
)


def run_command(args: argparse.Namespace, seed: int | str) -> list[str]:
    return [
        "bifamily", "run", args.recipe, "--set", f"run.seed={seed}", "--set", 'train.precision="fp32"',
        *[f"--set={item}" for item in args.set], "--out", str(args.runs / f"seed{seed}"), "--no-progress",
    ]


def train(args: argparse.Namespace, seed: int) -> float | None:
    """Train one seed (unless its run has a report already): its end-to-end wall seconds, None if reused."""
    return train_run(run_command(args, seed), args.runs / f"seed{seed}", args.threads)


def real_row(report: dict[str, Any]) -> dict[str, Any]:
    """The judge's figures for held-out real images (the ceiling the samples are compared with)."""
    if "judge_recognisable_real" not in report:
        return {}
    return {"recognisable": 100 * report["judge_recognisable_real"], "coverage": report["judge_coverage_real"]}


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of every figure over the seeds."""
    keys = [key for key, _, _ in COLUMNS if all(row.get(key) is not None for row in rows)]
    return {key: mean_sd([row[key] for row in rows]) for key in keys}


def format_table(rows: list[dict[str, Any]], stats: dict[str, dict[str, float]], real: dict[str, Any]) -> str:
    headings = ["seed", *[heading for _, heading, _ in COLUMNS]]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]

    def cells(row: dict[str, Any]) -> list[str]:
        return [fmt.format(row[key]) if row.get(key) is not None else "" for key, _, fmt in COLUMNS]

    for row in rows:
        lines.append("| " + " | ".join([str(row["seed"]), *cells(row)]) + " |")
    mean = [f"{fmt.format(stats[key]['mean'])} ± {stats[key]['sd']:.2g}" if key in stats else "" for key, _, fmt in COLUMNS]
    lines.append("| mean ± sd | " + " | ".join(mean) + " |")
    if real:
        lines.append("| real held-out images | " + " | ".join(cells(real)) + " |")
    return "\n".join(lines)


def mnist(args: argparse.Namespace, seed: int, steps: int) -> dict[str, Any]:
    """The recipe trained on MNIST with this seed, evaluated by bench/mnist_probe.py (reused if done)."""
    output = args.runs / f"mnist-seed{seed}.json"
    if not output.is_file():
        command = [
            sys.executable, "-m", "bench.mnist_probe", "--recipe", args.recipe, "--steps", str(steps),
            "--root", str(args.mnist), "--run-dir", str(args.runs / f"mnist-seed{seed}"), "--output", str(output),
            "--set", f"run.seed={seed}", "--set", 'train.precision="fp32"', *[f"--set={item}" for item in args.set],
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    results = json.loads(output.read_text())["results"]
    return {
        "seed": seed,
        **{f"{name}_{metric}": 100 * results[name][f"{metric}_top1"]
           for name in ("trained_ema_encoder", "encoder_at_initialisation", "raw_pixels") for metric in ("probe", "knn")},
    }


def format_mnist(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| seed | probe trained | probe init | probe raw pixels | k-NN trained | k-NN init | k-NN raw pixels |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        figures = [row[f"{name}_{metric}"] for metric in ("probe", "knn")
                   for name in ("trained_ema_encoder", "encoder_at_initialisation", "raw_pixels")]
        lines.append(f"| {row['seed']} | " + " | ".join(f"{value:.2f}" for value in figures) + " |")
    return "\n".join(lines)


def recipe_steps(args: argparse.Namespace) -> int:
    """The number of training steps of the (first) run, from its resolved recipe."""
    import tomllib

    resolved = tomllib.loads((args.runs / f"seed{args.seeds[0]}" / "recipe.toml").read_text())
    return resolved["run"]["steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=RECIPE, help=f"Recipe to train (default {RECIPE}).")
    parser.add_argument("--seeds", default="0,1,2,3", help="Comma-separated seeds (default 0,1,2,3).")
    parser.add_argument("--threads", type=int, default=2, help="Torch threads of each run (default 2).")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="A recipe override for every run (repeatable).")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "quickstart-seeds", help="Folder of the run directories.")
    parser.add_argument("--mnist", type=Path, default=MNIST, help="Folder of the MNIST idx files (skipped when absent).")
    parser.add_argument("--skip-mnist", action="store_true", help="Do not train on MNIST.")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Where the JSON result goes.")
    args = parser.parse_args()
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    rows = []
    for seed in args.seeds:
        seconds = train(args, seed)
        report = final_values(args.runs / f"seed{seed}")
        rows.append({"seed": seed, "steps": report["step"], **row_of(report, seconds)})
    stats = summary(rows)
    real = real_row(final_values(args.runs / f"seed{args.seeds[0]}"))
    print(format_table(rows, stats, real))
    mnist_rows = []
    if not args.skip_mnist and args.mnist.is_dir():
        mnist_rows = [mnist(args, seed, recipe_steps(args)) for seed in args.seeds]
        print(format_mnist(mnist_rows))
    reproduce = ["python", "-m", "bench.quickstart_seeds", "--recipe", args.recipe, "--seeds", ",".join(map(str, args.seeds)),
                 "--threads", str(args.threads), *[f"--set={item}" for item in args.set]]
    result_file.write(args.output, {
        "benchmark": "a recipe over seeds in fp32: end-to-end wall time, probe and k-NN against initialisation, sample judge",
        "recipe": args.recipe,
        "reproduce": shlex.join(reproduce),
        "run_command": shlex.join(run_command(args, "SEED")),
        "threads_per_run": args.threads,
        "runs": rows,
        "summary": stats,
        "real_images": real,
        "mnist": mnist_rows,
    })


if __name__ == "__main__":
    main()
