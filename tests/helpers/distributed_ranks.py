"""The rank function tests start with torch.multiprocessing.spawn (2 ranks, gloo).

It lives apart from the test modules so that a spawned rank imports only torch and the modules under
test, not the whole CLI (seconds per rank on a small machine).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import torch
import torch.distributed as dist

from bifamily.batchnorm import AllReduceBatchNorm2d
from bifamily.distributed import World
from bifamily.errors import CheckpointError

BN_WEIGHT = (1.0, 2.0, 0.5, -1.0)
BN_BIAS = (0.0, 0.1, -0.2, 0.3)


def _batch_norm(rank: int, x: torch.Tensor, upstream: torch.Tensor) -> dict:
    """Rank 0 takes rows 0-2 of ``x``, rank 1 the rest: outputs, gradients and running stats."""
    rows = slice(0, 3) if rank == 0 else slice(3, None)  # uneven shares: counts must be reduced too
    bn = AllReduceBatchNorm2d(x.shape[1])
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(BN_WEIGHT))
        bn.bias.copy_(torch.tensor(BN_BIAS))
    mine = x[rows].clone().requires_grad_(True)
    y = bn(mine)
    (y * upstream[rows]).sum().backward()
    bn(x[rows] * 2)  # a second batch: running statistics keep averaging
    results = {"y": y.detach(), "dx": mine.grad, "dw": bn.weight.grad, "db": bn.bias.grad, "state": bn.state_dict()}
    if rank == 0:  # eval mode uses the running statistics: rank 0 alone can evaluate (EMA grids do)
        results["eval"] = bn.eval()(x)
    return results


def _world(rank: int) -> dict:
    world = World(rank=rank, size=2)
    averaged = world.average({"loss": torch.tensor(float(rank + 1)), "other": torch.tensor(4.0 * rank)})

    def decide_badly() -> Path:
        raise CheckpointError("--resume: nothing to resume")

    try:
        world.on_main(decide_badly)
        refused = []
    except CheckpointError:
        refused = ["a CheckpointError escaped on this rank"]
    except Exception as exc:  # noqa: BLE001 - the test wants what every rank saw
        refused = exc.lines() if hasattr(exc, "lines") else [repr(exc)]
    decided = world.on_main(lambda: Path(f"chosen-by-rank-{rank}"))
    return {"averaged": averaged, "refused": refused, "decided": str(decided)}


def run_rank(rank: int, port: int, x: torch.Tensor, upstream: torch.Tensor, out: Path) -> None:
    # A collective that one rank skips fails after 60 s instead of hanging the test.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    results = {"batch_norm": _batch_norm(rank, x, upstream), "world": _world(rank)}
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: in about one spawned job of fifteen under pytest, gloo's
    # static destructors abort the process (std::terminate, no Python frame) after everything above
    # has finished and been saved, which spawn reports as a failed rank.
    os._exit(0)
