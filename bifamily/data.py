"""A resumable stream of training batches, and how each global batch is split over ranks and micro-steps.

The order of each epoch is a permutation drawn from (seed, epoch) alone, and the stream's position is
(epoch, global batch index), so a resumed run sees exactly the batches an uninterrupted run would have,
whatever the number of ranks before and after.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import attrs
import torch
from torch.utils.data import DataLoader, Dataset

_EPOCH_SEED_STRIDE = 1_000_003


def collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([image for image, _ in samples])
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    return images, labels


def fetch(dataset: Dataset, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
    """Fetch several items, through the data set's batched ``__getitems__`` when it has one."""
    getitems = getattr(dataset, "__getitems__", None)
    if getitems is not None:
        return getitems(indices)
    return [dataset[i] for i in indices]


@attrs.frozen
class BatchLayout:
    """Which rows of a global batch this rank computes, and in which micro-step.

    A global batch of ``batch_size`` rows is processed in ``accumulation`` sequential micro-steps of
    ``batch_size / accumulation`` rows each, spread evenly over the ranks:

        global row = (micro_step * world_size + rank) * micro_batch + i,   0 <= i < micro_batch

    So each micro-step covers the same rows whatever the world size: cross-replica batch norm sees
    the same samples on 1 rank or on 8, and only ``accumulation`` changes batch statistics.
    """

    batch_size: int
    accumulation: int = 1
    world_size: int = 1
    rank: int = 0

    @property
    def micro_batch(self) -> int:
        """Rows per rank per micro-step."""
        return self.batch_size // (self.accumulation * self.world_size)

    def rows(self) -> list[int]:
        """This rank's global rows, micro-step by micro-step."""
        m, w = self.micro_batch, self.world_size
        return [(j * w + self.rank) * m + i for j in range(self.accumulation) for i in range(m)]

    def local(self, global_batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor holding the whole global batch, shaped (accumulation, micro_batch, ...)."""
        rest = global_batch.shape[1:]
        split = global_batch.reshape(self.accumulation, self.world_size, self.micro_batch, *rest)
        return split[:, self.rank]


class _Batches(torch.utils.data.Sampler):
    def __init__(self, order: list[int], batch_size: int, start: int, rows: Sequence[int]):
        self.order, self.batch_size, self.start, self.rows = order, batch_size, start, rows

    def __len__(self) -> int:
        return len(self.order) // self.batch_size - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start, len(self.order) // self.batch_size):
            yield [self.order[b * self.batch_size + row] for row in self.rows]


def _pinned(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch[0].pin_memory(), batch[1].pin_memory()


class BatchStream:
    """Endless iterator of (images, labels) batches with a saveable position. Drops ragged batches.

    Each item holds the ``rows`` of one global batch of ``batch_size`` (all of it by default): a rank
    loads only its share, and the position counts global batches, so it means the same on any world size.
    With ``pin_memory`` (set for a CUDA device) batches come in page-locked memory, so the trainer's
    ``non_blocking`` copy to the GPU overlaps with compute instead of waiting for a staging copy.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        rows: Sequence[int] | None = None,
        pin_memory: bool = False,
    ):
        if len(dataset) < batch_size:
            raise ValueError(f"data set has {len(dataset)} images, fewer than one batch of {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.rows = list(range(batch_size)) if rows is None else list(rows)
        self.epoch = 0
        self.batch = 0
        self._iterator: Iterator | None = None

    def state(self) -> dict[str, int]:
        """Position of the next batch to be consumed."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._iterator = None

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * _EPOCH_SEED_STRIDE + self.epoch)
        return torch.randperm(len(self.dataset), generator=generator).tolist()

    def _start_epoch(self) -> Iterator:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        sampler = _Batches(self._order(), self.batch_size, self.batch, self.rows)
        if self.num_workers == 0:
            batches = (collate(fetch(self.dataset, indices)) for indices in sampler)
            return (_pinned(batch) for batch in batches) if self.pin_memory else batches
        return iter(
            DataLoader(
                self.dataset,
                batch_sampler=sampler,
                num_workers=self.num_workers,
                collate_fn=collate,
                pin_memory=self.pin_memory,
                persistent_workers=False,
            )
        )

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            if self._iterator is None:
                self._iterator = self._start_epoch()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self.epoch += 1
                self.batch = 0
                self._iterator = None
                continue
            self.batch += 1
            return batch
