"""BigBiGAN's Table 1 in miniature: the paper's ablation rows trained over seeds on the procedural shapes.

    python -m bench.ablations_small                          # every row, seeds 0-3, two runs at a time
    python -m bench.ablations_small --rows base,e_up_lr --seeds 0,1
    python -m bench.ablations_small --steps 100 --output /tmp/table.json

Each row is a recipe under recipes/ablations_small/ that differs from base.toml only where the paper's
row differs from its Base. Each (row, seed) is one `bifamily run RECIPE --set run.seed=S --set
train.precision="fp32"` (a subprocess with `--threads` torch threads; `--jobs` of them at a time). From
every value recorded at a run's last step the table reads the EMA encoder's linear probe and k-NN and
the sample judge's recognisability, coverage and Fréchet distance in its features, as mean ± standard
error over the seeds. It then tests the paper's directions (below): for each, the difference of the two
rows' means in units of its standard error, and whether the direction holds at this scale.

A run directory that already holds a report is read again, not retrained, so an interrupted table
resumes where it stopped. Writes bench/results/ablations_small.json (or `--output`).
"""

from __future__ import annotations

import argparse
import math
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from bench import result_file
from bench.run_reports import final_values, mean_sd, row_of, train_run

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "ablations_small.json"
RECIPES = "recipes/ablations_small"
ROWS = {  # recipe stem -> the row's name in the paper's Table 1
    "base": "Base",
    "deterministic_e": "Deterministic E",
    "uniform_pz": "Uniform Pz",
    "x_unary_only": "x Unary Only",
    "z_unary_only": "z Unary Only",
    "no_unaries": "No Unaries",
    "e_up_lr": "E up-LR",
    "no_e_gan": "No E (GAN)",
}
ENCODER_FREE = {"no_e_gan"}  # rows whose encoder is never trained: sample metrics only
METRICS = (  # (key in a run's figures, heading, format, higher is better)
    ("probe", "probe %", "{:.1f}", True),
    ("knn", "k-NN %", "{:.1f}", True),
    ("recognisable", "recognisable %", "{:.1f}", True),
    ("coverage", "coverage", "{:.3f}", True),
    ("fd", "judge FD", "{:.2f}", False),
)


class Direction(NamedTuple):
    """A finding of the paper: row ``better`` beats row ``worse`` on ``metric``; with ``at_least_as_good``
    only that ``worse`` is no better than ``better`` (not better by 2 standard errors or more)."""

    claim: str
    metric: str
    better: str
    worse: str
    at_least_as_good: bool = False


DIRECTIONS = (
    Direction("a stochastic E probes better than a deterministic one", "probe", "base", "deterministic_e"),
    Direction("a stochastic E probes better than a uniform prior with tanh E", "probe", "base", "uniform_pz"),
    Direction("the x unary term gives better samples (x Unary Only vs z Unary Only)", "fd", "x_unary_only", "z_unary_only"),
    Direction("the x unary term gives better samples (Base vs No Unaries)", "fd", "base", "no_unaries"),
    Direction("the x unary term gives more recognisable samples (x Unary Only vs z Unary Only)", "recognisable", "x_unary_only", "z_unary_only"),
    Direction("the x unary term gives more recognisable samples (Base vs No Unaries)", "recognisable", "base", "no_unaries"),
    Direction("a GAN without E samples no better than Base", "fd", "base", "no_e_gan", at_least_as_good=True),
    Direction("a 10x encoder learning rate improves the probe", "probe", "e_up_lr", "base"),
)


def run_folder(args: argparse.Namespace, row: str, seed: int | str) -> Path:
    return args.runs / row / f"seed{seed}"


def run_command(args: argparse.Namespace, row: str, seed: int | str) -> list[str]:
    steps = [f"--set=run.steps={args.steps}"] if args.steps else []
    return [
        "bifamily", "run", f"{RECIPES}/{row}.toml", "--set", f"run.seed={seed}", "--set", 'train.precision="fp32"',
        *steps, *[f"--set={item}" for item in args.set], "--out", str(run_folder(args, row, seed)), "--no-progress",
    ]


def mean_and_error(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation and standard error of the mean over the seeds."""
    stats = mean_sd(values)
    return {**stats, "se": stats["sd"] / math.sqrt(len(values)), "n": len(values)}


def row_summary(row: str, runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Every metric of one row over its seeds; an encoder-free row has no probe or k-NN."""
    keys = [key for key, *_ in METRICS if key not in ("probe", "knn") or row not in ENCODER_FREE]
    return {key: mean_and_error([run[key] for run in runs]) for key in keys if all(key in run for run in runs)}


def margin(direction: Direction, table: dict[str, dict[str, dict[str, float]]]) -> float | None:
    """How far the rows' means differ in the paper's direction, in standard errors of the difference
    (positive: the direction holds); None when a row lacks the metric."""
    higher_is_better = next(better for key, _, _, better in METRICS if key == direction.metric)
    a = table.get(direction.better, {}).get(direction.metric)
    b = table.get(direction.worse, {}).get(direction.metric)
    if a is None or b is None:
        return None
    difference = (a["mean"] - b["mean"]) * (1 if higher_is_better else -1)
    error = math.hypot(a["se"], b["se"])
    if error == 0:
        return math.copysign(math.inf, difference) if difference else 0.0
    return difference / error


def verdict(direction: Direction, value: float | None) -> str:
    """Whether the direction holds: by 2 standard errors or more, in sign only, or not."""
    if value is None:
        return "not measured"
    if direction.at_least_as_good:
        return "holds" if value > -2 else "does not hold"
    if value >= 2:
        return "holds"
    if value > 0:
        return "same sign, within 2 SE"
    return "does not hold" if value > -2 else "reversed (by 2 SE or more)"


def format_table(table: dict[str, dict[str, dict[str, float]]]) -> str:
    headings = ["row", *[heading for _, heading, _, _ in METRICS]]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for row, stats in table.items():
        cells = [f"{fmt.format(stats[key]['mean'])} ± {fmt.format(stats[key]['se'])}" if key in stats else "—"
                 for key, _, fmt, _ in METRICS]
        lines.append(f"| {ROWS[row]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_directions(findings: list[dict[str, Any]]) -> str:
    lines = ["| the paper's direction | metric | margin (SE) | at this scale |", "|---|---|---|---|"]
    for finding in findings:
        value = finding["margin_se"]
        shown = "—" if value is None else f"{value:+.1f}"
        lines.append(f"| {finding['claim']} | {finding['metric']} | {shown} | {finding['verdict']} |")
    return "\n".join(lines)


def train_all(args: argparse.Namespace) -> dict[tuple[str, int], float | None]:
    """Train every (row, seed) without a report yet, ``args.jobs`` at a time: wall seconds of each."""
    jobs = [(row, seed) for seed in args.seeds for row in args.rows]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        seconds = pool.map(lambda job: train_run(run_command(args, *job), run_folder(args, *job), args.threads), jobs)
        return dict(zip(jobs, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"Comma-separated rows (default all: {','.join(ROWS)}).")
    parser.add_argument("--seeds", default="0,1,2,3", help="Comma-separated seeds (default 0,1,2,3).")
    parser.add_argument("--steps", type=int, default=None, help="Training steps of every run (default: the recipes').")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads of each run (default 1).")
    parser.add_argument("--jobs", type=int, default=2, help="Runs at a time (default 2).")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="A recipe override for every run (repeatable).")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "ablations-small", help="Folder of the run directories.")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Where the JSON result goes.")
    args = parser.parse_args()
    args.rows = args.rows.split(",")
    unknown = [row for row in args.rows if row not in ROWS]
    if unknown:
        raise SystemExit(f"error: --rows: unknown row {unknown[0]!r}; rows: {', '.join(ROWS)}")
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    seconds = train_all(args)
    runs = {row: [{"seed": seed, **row_of(final_values(run_folder(args, row, seed)), seconds[row, seed])}
                  for seed in args.seeds] for row in args.rows}
    table = {row: row_summary(row, row_runs) for row, row_runs in runs.items()}
    findings = []
    for direction in DIRECTIONS:
        value = margin(direction, table)
        findings.append({**direction._asdict(), "margin_se": value, "verdict": verdict(direction, value)})
    print(format_table(table))
    print()
    print(format_directions(findings))
    measured = [value for value in seconds.values() if value is not None]
    reproduce = ["python", "-m", "bench.ablations_small", "--rows", ",".join(args.rows), "--seeds", ",".join(map(str, args.seeds)),
                 "--threads", str(args.threads), "--jobs", str(args.jobs), *([f"--steps={args.steps}"] if args.steps else []),
                 *[f"--set={item}" for item in args.set]]
    result_file.write(args.output, {
        "benchmark": "BigBiGAN Table 1 rows in miniature over seeds: probe, k-NN and sample judge, mean and standard error",
        "reproduce": shlex.join(reproduce),
        "run_command": shlex.join(run_command(args, "ROW", "SEED")),
        "threads_per_run": args.threads,
        "runs_at_a_time": args.jobs,
        "core_seconds_trained": sum(measured) * args.threads if len(measured) == len(seconds) else None,
        "table": {ROWS[row]: stats for row, stats in table.items()},
        "directions": findings,
        "runs": {ROWS[row]: row_runs for row, row_runs in runs.items()},
    })


if __name__ == "__main__":
    main()
