"""python -m bench.conv_ceiling [--recipe R] [--modes fp32_channels_last bf16_channels_last] [--output JSON]

How close to the machine's conv limit can a model's step get at all? One training step is run with
every counted operation recorded (convolutions forward and backward, matmuls: the operations torch's
flop counter counts). Each distinct operation is then replayed alone, at its exact shapes, strides
and dtype, on warm caches, and its best time kept. The counted FLOPs of the step divided by the sum
of these best times is the FLOP/s the step would reach if it did nothing but these kernels at their
isolated speed: an upper bound of the "model FLOP/s" the performance suite reports, measured with
the same kernels. Printed and written as a fraction of the conv limit of the step's device and
precision, measured in the same run (``bench.suite.machine``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from bench import result_file
from bench.suite.configs import MODES
from bench.suite.machine import DTYPES, FULL_SHAPES, conv_gflops
from bench.suite.training import load_recipe, synchronize, timed_step, warm_trainer


class TensorSpec(tuple):
    """(shape, stride, dtype, device) of a recorded argument: what its replay stand-in must match."""


def _spec(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TensorSpec((tuple(value.shape), value.stride(), value.dtype, value.device))
    return value


def _stand_in(value: Any) -> Any:
    if isinstance(value, TensorSpec):
        shape, stride, dtype, device = value
        return torch.empty_strided(shape, stride, dtype=dtype, device=device).normal_()
    return value


def _device(specs: Any) -> torch.device:
    args, _ = specs
    return next(arg[3] for arg in args if isinstance(arg, TensorSpec))


@attrs.define
class Call:
    """A distinct counted operation of the recorded block and how often the block ran it."""

    func: Any
    specs: Any  # (args, kwargs) with every tensor replaced by its TensorSpec
    count: int = 0


class Recorder(TorchDispatchMode):
    """Collects the distinct counted operations (function + argument specs) a block runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[tuple[Any, str], Call] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        kwargs = kwargs or {}
        if func.overloadpacket in flop_registry:  # what torch's flop counter counts
            specs = tree_map(_spec, (args, kwargs))
            self.calls.setdefault((func, repr(specs)), Call(func, specs)).count += 1
        return func(*args, **kwargs)


@torch.no_grad()
def replay(call: Call, repeats: int) -> dict[str, Any]:
    """The call's best time alone (on random tensors of its specs, warm caches) and FLOPs, each
    multiplied by how often the block ran it."""
    args, kwargs = tree_map(_stand_in, call.specs)
    device = _device(call.specs)
    call.func(*args, **kwargs)  # warm-up: kernel choice, workspace
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        call.func(*args, **kwargs)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    with FlopCounterMode(display=False) as counter:
        call.func(*args, **kwargs)
    return {
        "op": f"{call.func.__name__}{_shapes(call.specs)}",
        "calls": call.count,
        "seconds": best * call.count,
        "flops": counter.get_total_flops() * call.count,
    }


def _shapes(specs: Any) -> list[list[int]]:
    args, _ = specs
    return [list(arg[0]) for arg in args if isinstance(arg, TensorSpec)]


def kernel_ceiling(calls: list[Call], repeats: int) -> dict[str, Any]:
    """Counted FLOPs over the summed isolated times of ``calls``, with the slowest operations."""
    rows = sorted((replay(call, repeats) for call in calls), key=lambda row: -row["seconds"])
    seconds = sum(row["seconds"] for row in rows)
    flops = sum(row["flops"] for row in rows)
    return {
        "counted_flops": flops,
        "isolated_kernel_seconds": seconds,
        "ceiling_gflops": flops / seconds / 1e9,
        "distinct_ops": len(rows),
        "slowest_ops": [
            {**row, "gflops": row["flops"] / row["seconds"] / 1e9, "share_of_time": row["seconds"] / seconds}
            for row in rows[:12]
        ],
    }


def step_ceiling(recipe_path: str, overrides: tuple[str, ...], warmup: int, steps: int, repeats: int) -> dict[str, Any]:
    """The recipe's training step: the median of ``steps`` timed steps after ``warmup``, then one step
    recorded and its operations replayed, and the conv limit of the step's device and precision.
    The achieved FLOP/s use the replay's FLOP count, which is the flop counter's count of a step."""
    recipe = load_recipe(recipe_path, overrides)
    with warm_trainer(recipe, warmup) as trainer:
        step_seconds = statistics.median(timed_step(trainer, trainer.device)[0] for _ in range(steps))
        with Recorder() as recorder:
            trainer.train_step()
        device = trainer.device
    result = kernel_ceiling(list(recorder.calls.values()), repeats)
    limit = conv_gflops(DTYPES[recipe.train.precision], device, FULL_SHAPES)
    achieved = result["counted_flops"] / step_seconds / 1e9
    return {
        "step_seconds": step_seconds,
        "achieved_gflops": achieved,
        **result,
        "conv_limit_gflops": limit,
        "ceiling_fraction_of_conv_limit": result["ceiling_gflops"] / limit,
        "achieved_fraction_of_conv_limit": achieved / limit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="recipes/bigbigan_small.toml")
    parser.add_argument("--modes", nargs="+", default=["fp32_channels_last", "bf16_channels_last"], choices=sorted(MODES))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    parser.add_argument("--repeats", type=int, default=5, help="timings of each replayed operation (best)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--output", type=Path, default=Path("bench/results/conv_ceiling.json"))
    args = parser.parse_args()
    report: dict[str, Any] = {
        "recipe": args.recipe, "overrides": args.overrides, "threads": torch.get_num_threads(), "modes": {}
    }
    for mode in args.modes:
        overrides = (*args.overrides, *MODES[mode].overrides())
        result = step_ceiling(args.recipe, overrides, args.warmup, args.steps, args.repeats)
        report["modes"][mode] = result
        print(
            f"{mode}: counted {result['counted_flops'] / 1e9:.1f} GFLOP per step in {result['distinct_ops']} distinct ops; "
            f"alone they take {result['isolated_kernel_seconds']:.3f} s -> {result['ceiling_gflops']:.0f} GFLOP/s, "
            f"{100 * result['ceiling_fraction_of_conv_limit']:.0f}% of the conv limit ({result['conv_limit_gflops']:.0f} GFLOP/s); "
            f"the whole step: {result['step_seconds']:.3f} s (median) -> {result['achieved_gflops']:.0f} GFLOP/s, "
            f"{100 * result['achieved_fraction_of_conv_limit']:.0f}%"
        )
        for row in result["slowest_ops"][:5]:
            print(f"  {100 * row['share_of_time']:4.1f}%  {row['gflops']:7.0f} GFLOP/s  x{row['calls']:<3} {row['op']}")
    result_file.write(args.output, report)


if __name__ == "__main__":
    main()
