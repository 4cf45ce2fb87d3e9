"""Training step time and images/s: 1 rank vs 2 ranks (DDP, gloo on CPU / NCCL on CUDA), fp32 vs bf16.

    python -m bench.ddp_throughput                      # the quickstart model, batch 64 at 32x32, CPU
    python -m bench.ddp_throughput --set train.batch_size=128 --steps 20

Each configuration runs in fresh processes (torch.multiprocessing, one per rank, the environment
torchrun would set) through the real trainer: ``Trainer.fit`` with an ``on_tick`` callback that
stamps the end of every step. A step is ``train.d_steps`` D updates + one G/E update on the global
batch; images/s counts every real image drawn (batch x (d_steps + 1), or batch with simultaneous
updates) per second of wall time.
Reported: the median over ``--steps`` steps after ``--warmup`` steps (the last step, which writes a
checkpoint and grids, is never timed). On a CPU the ranks share the machine's cores: 1 rank uses all
of them as intra-op threads, each of 2 ranks half, so the comparison shows the cost of splitting the
same cores, not a speed-up. The 1-minute load average before each configuration is recorded: other
processes on the machine distort the figures. Prints a table and writes bench/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

RESULTS = Path(__file__).parent / "results" / "distributed.json"
QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.toml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, overrides: list[str], threads: int, out: Path) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    torch.set_num_threads(threads)
    from bifamily import distributed
    from bifamily.plugins import default_plugins
    from bifamily.recipe import load
    from bifamily.rundir import RunWriter
    from bifamily.session import make_trainer, prepare

    recipe = load(QUICKSTART, default_plugins(), overrides)
    world = distributed.world_from_environment(recipe.run.device)
    stamps: list[float] = []
    with distributed.joined(world, recipe.train.collective_timeout_s):
        prepared = prepare(recipe, world)
        if world.is_main:
            RunWriter(out / "run").create(recipe.to_dict())
        trainer = make_trainer(prepared, out / "run", world=world, progress=False)
        recon = torch.stack([prepared.test_data[i][0] for i in range(4)])
        stamps.append(time.perf_counter())
        trainer.fit(recon, on_tick=lambda _: stamps.append(time.perf_counter()))
    if world.is_main:
        (out / "stamps.json").write_text(json.dumps(stamps))


def measure(world_size: int, precision: str, args: argparse.Namespace, cores: int) -> dict[str, Any]:
    steps = args.warmup + args.steps + 1  # the last step writes a checkpoint: never timed
    overrides = [
        *args.overrides, f"train.precision={precision}", f"run.steps={steps}", f"run.log_every={steps}",
        f"run.sample_every={steps}", f"run.checkpoint_every={steps}", 'eval.report=""',
    ]
    threads = max(1, cores // world_size)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        mp.spawn(_rank, args=(world_size, _free_port(), overrides, threads, out), nprocs=world_size)
        stamps = json.loads((out / "stamps.json").read_text())
    durations = [b - a for a, b in zip(stamps, stamps[1:])][args.warmup : args.warmup + args.steps]
    from bifamily.plugins import default_plugins
    from bifamily.recipe import load

    train = load(QUICKSTART, default_plugins(), overrides).train
    step = statistics.median(durations)
    return {
        "ranks": world_size,
        "precision": precision,
        "threads_per_rank": threads,
        "global_batch": train.batch_size,
        "step_seconds_median": step,
        "step_seconds_all": durations,
        "images_per_s": train.batch_size * train.batches_per_step / step,
        "load_average_before": load_before,  # other work on the machine skews the figures
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Recipe override for the quickstart recipe (repeatable).")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per configuration.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first.")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU cores shared by the ranks.")
    args = parser.parse_args()
    os.environ.setdefault("BIFAMILY_DISABLE_PLUGIN_AUTOLOAD", "1")

    results = [measure(ranks, precision, args, args.cores) for precision in ("fp32", "bf16") for ranks in (1, 2)]
    report = {
        "setup": {
            "recipe": str(QUICKSTART.relative_to(QUICKSTART.parents[1])),
            "overrides": args.overrides,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "cpu": platform.processor() or platform.machine(),
            "cores": args.cores,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
        },
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'ranks':>5} {'precision':>9} {'threads/rank':>12} {'step ms':>8} {'images/s':>9}")
    for r in results:
        print(f"{r['ranks']:>5} {r['precision']:>9} {r['threads_per_rank']:>12} "
              f"{1000 * r['step_seconds_median']:>8.1f} {r['images_per_s']:>9.1f}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
