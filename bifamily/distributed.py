"""Training on several processes: the process group, DDP wrapping, and the torchrun hand-over.

A run is launched by torchrun (``torchrun --nproc-per-node=N -m bifamily run RECIPE``, or
``bifamily run RECIPE --nproc N``, which calls torch.distributed.run itself). Each process reads its
place from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), takes GPU ``LOCAL_RANK`` on CUDA,
and joins a process group: NCCL on CUDA, gloo on CPU. Without torchrun the world is this process alone
and nothing here communicates.

What is averaged where (see docs/distributed.md): gradients by DDP (mean over ranks, after each rank
took the mean over its rows, so the mean over the global batch); batch-norm statistics of G and E by
cross-replica batch norm; logged statistics at log ticks. Everything else is identical on every rank
by construction (same seed, same global latents, same updates), so it is never communicated.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
from typing import Any, Callable, Iterator, TypeVar

import attrs
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bifamily.config import DEVICE_NAMES, is_device_name
from bifamily.errors import BifamilyError

T = TypeVar("T")


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1, key: str = "$.run.device") -> torch.device:
    """``run.device`` for the process with ``local_rank``: each rank of a CUDA run takes GPU ``local_rank``.

    ``key`` names where ``name`` came from (a recipe key or a command-line option) in the errors."""
    if not is_device_name(name):
        raise BifamilyError(f"{key}: must be {DEVICE_NAMES}, got {name!r}")
    cuda = torch.cuda.is_available()
    if name == "auto":
        name = "cuda" if cuda else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not cuda:
        raise BifamilyError(f"{key} is {name!r} but CUDA is not available on this machine")
    if device.index is not None:
        if world_size > 1:
            raise BifamilyError(
                f"{key} is {name!r}, which would put every rank on one GPU; "
                "use 'cuda' or 'auto' (each rank takes GPU LOCAL_RANK)"
            )
        if device.index >= torch.cuda.device_count():
            raise BifamilyError(f"{key} is {name!r} but this machine has {torch.cuda.device_count()} GPU(s)")
        return device
    if local_rank >= torch.cuda.device_count():
        raise BifamilyError(
            f"local rank {local_rank} needs GPU {local_rank} but this machine has {torch.cuda.device_count()}; "
            "start at most one process per GPU (--nproc / --nproc-per-node)"
        )
    return torch.device("cuda", local_rank)


def config_problems(train: Any, world_size: int, device: torch.device) -> list[str]:
    """Recipe problems that depend on the world size or the device (``train`` is the recipe's [train])."""
    problems = []
    split = train.accumulation * world_size
    if train.batch_size % split:
        problems.append(
            f"$.train.batch_size: {train.batch_size} cannot be split into $.train.accumulation = "
            f"{train.accumulation} micro-steps on {world_size} rank{'s' * (world_size > 1)}: "
            f"it must be a multiple of {split}"
        )
    if train.precision == "fp16" and device.type != "cuda":
        problems.append(
            f"$.train.precision: 'fp16' needs CUDA (loss scaling with torch.amp.GradScaler) but $.run.device "
            f"resolves to {device.type}; use 'bf16' there"
        )
    return problems


class DecidedOnMainError(BifamilyError):
    """A user error that rank 0 met while deciding for every rank, raised again on each of them."""

    def __init__(self, lines: list[str]):
        self._lines = list(lines)
        super().__init__("\n".join(self._lines))

    def lines(self) -> list[str]:
        return self._lines


@attrs.frozen
class World:
    """This process's place in the run. The default is a run of one process on the CPU."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file and the progress bar."""
        return self.rank == 0

    def average(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """The mean over ranks of scalar tensors (one all-reduce); every rank must call it."""
        names = sorted(values)
        stacked = torch.stack([values[name].detach().float() for name in names])
        if self.size > 1:
            dist.all_reduce(stacked)
            stacked /= self.size
        return dict(zip(names, stacked.tolist()))

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def on_main(self, decide: Callable[[], T]) -> T:
        """Run ``decide`` on rank 0 only and hand its result to every rank.

        A :class:`BifamilyError` raised there is raised on every rank, so no rank waits for a value
        that will never come (choosing the run directory is decided this way).
        """
        if self.size == 1:
            return decide()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("value", decide())
            except BifamilyError as exc:
                box[0] = ("error", exc.lines())
        dist.broadcast_object_list(box, src=0)
        kind, payload = box[0]
        if kind == "error":
            raise DecidedOnMainError(payload)
        return payload

    def data_parallel(self, module: nn.Module, *, find_unused: bool) -> nn.Module:
        """``module`` wrapped in DDP when there are several ranks (else unchanged).

        Buffers are synchronised once, at wrapping, and not before every forward: batch-norm statistics
        are cross-replica and spectral-norm vectors follow from identical weights, so every rank
        already holds the same values.
        """
        if self.size == 1:
            return module
        return DistributedDataParallel(
            module,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            forward_sync_buffers=False,
            find_unused_parameters=find_unused,
        )


def world_from_environment(device_name: str) -> World:
    """This process's world as torchrun describes it in the environment (one process without torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return World(rank, size, local_rank, resolve_device(device_name, local_rank, size))


@contextlib.contextmanager
def joined(world: World, timeout_s: int) -> Iterator[World]:
    """Join the process group of ``world`` for the duration of a run (nothing to do for one process).

    A collective that waits longer than ``timeout_s`` (a rank hung) raises instead of blocking forever;
    a rank that dies is noticed by torchrun, which stops the others. On an exception the group is not
    torn down (that could wait on the failed peers): the process exits and torchrun cleans up.
    """
    if world.size == 1:
        yield world
        return
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    dist.init_process_group(
        backend="nccl" if world.device.type == "cuda" else "gloo",
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    yield world
    dist.destroy_process_group()


class Replicated:
    """A module as the training loop calls it: DDP-wrapped across ranks and compiled when asked.

    ``module`` stays the plain module; ``syncing(last)`` turns DDP's gradient all-reduce off on every
    micro-step of an update but the last, so an update all-reduces once however it is accumulated.
    """

    def __init__(self, module: nn.Module, world: World, *, find_unused: bool = False, compile: bool = False):
        self.module = module
        self.wrapped = world.data_parallel(module, find_unused=find_unused)
        self.call = torch.compile(self.wrapped) if compile else self.wrapped

    def __call__(self, *args: Any) -> Any:
        return self.call(*args)

    def syncing(self, last: bool) -> contextlib.AbstractContextManager:
        if last or not isinstance(self.wrapped, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.wrapped.no_sync()


# -- the torchrun hand-over -------------------------------------------------------------------------


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


class RankFailed(Exception):
    """A rank of a job started by :func:`launch` ended with an error; torchrun stopped the others."""

    def __init__(self, rank: int, exitcode: int):
        self.rank = rank
        self.exitcode = exitcode
        super().__init__(f"rank {rank} {describe_exit(exitcode)}; torchrun stopped the other ranks")


def describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def launch(nproc: int, arguments: list[str]) -> None:
    """Run ``python -m bifamily ARGUMENTS`` as ``nproc`` ranks on this machine through torchrun's own
    launcher (``torchrun --standalone --nproc-per-node=NPROC -m bifamily ...``); returns when all
    ranks finished, raises :class:`RankFailed` when one did not."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "bifamily", *arguments])
    try:
        run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise RankFailed(rank, failure.exitcode) from None
