"""Alternating against simultaneous updates: step time and FLOPs of one recipe, measured side by side.

    python -m bench.update_modes                                   # the quickstart, fp32, 2 threads
    python -m bench.update_modes --recipe recipes/bigan.toml --steps 10 --output /tmp/modes.json

Two trainers of the same recipe, one per mode (``train.updates``; the simultaneous one with
``train.d_steps = 1``), take their steps in turn in one process, so machine load affects both alike;
each mode's median step time, their ratio and each mode's FLOPs per step (torch's counter) are
printed and written to bench/results/update_modes.json. What a step learns in each mode is measured
over seeds by runs, not here (docs/results.md).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import torch

from bench import result_file
from bench.suite.training import count_step_flops, load_recipe, timed_step, warm_trainer

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "update_modes.json"
MODES = {
    "alternating": ('train.updates="alternating"',),
    "simultaneous": ('train.updates="simultaneous"', "train.d_steps=1"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/quickstart.toml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="A recipe override (repeatable).")
    parser.add_argument("--threads", type=int, default=2, help="Torch threads (default 2).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps per mode first (default 3).")
    parser.add_argument("--steps", type=int, default=40, help="Timed steps per mode (default 40).")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = ('train.precision="fp32"', *args.set)
    with warm_trainer(load_recipe(args.recipe, (*common, *MODES["alternating"])), args.warmup) as alternating, \
            warm_trainer(load_recipe(args.recipe, (*common, *MODES["simultaneous"])), args.warmup) as simultaneous:
        trainers = {"alternating": alternating, "simultaneous": simultaneous}
        times: dict[str, list[float]] = {mode: [] for mode in trainers}
        for _ in range(args.steps):
            for mode, trainer in trainers.items():
                times[mode].append(timed_step(trainer, trainer.device)[0])
        modes = {
            mode: {"step_seconds": statistics.median(times[mode]), "flops_per_step": count_step_flops(trainer)}
            for mode, trainer in trainers.items()
        }
    speedup = modes["alternating"]["step_seconds"] / modes["simultaneous"]["step_seconds"]
    for mode, row in modes.items():
        print(f"{mode:13s} {row['step_seconds'] * 1000:7.1f} ms/step  {row['flops_per_step'] / 1e9:6.2f} GFLOP/step")
    print(f"simultaneous steps are {speedup:.2f}x faster (median of {args.steps}, interleaved, {args.threads} threads, fp32)")
    result_file.write(args.output, {
        "command": shlex.join(["python", "-m", "bench.update_modes", *sys.argv[1:]]),
        "recipe": args.recipe, "threads": args.threads, "steps_timed": args.steps, "precision": "fp32",
        "modes": modes, "speedup": speedup,
    })


if __name__ == "__main__":
    main()
