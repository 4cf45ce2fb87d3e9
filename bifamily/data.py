"""A resumable stream of training batches.

The order of each epoch is a permutation drawn from (seed, epoch) alone, and the stream's position is
(epoch, batch index), so a resumed run sees exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

from typing import Any, Iterator

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


class _Batches(torch.utils.data.Sampler):
    def __init__(self, order: list[int], batch_size: int, start: int):
        self.order, self.batch_size, self.start = order, batch_size, start

    def __len__(self) -> int:
        return len(self.order) // self.batch_size - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start, len(self.order) // self.batch_size):
            yield self.order[b * self.batch_size : (b + 1) * self.batch_size]


class BatchStream:
    """Endless iterator of (images, labels) batches with a saveable position. Drops ragged batches."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0):
        if len(dataset) < batch_size:
            raise ValueError(f"data set has {len(dataset)} images, fewer than one batch of {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
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
        sampler = _Batches(self._order(), self.batch_size, self.batch)
        if self.num_workers == 0:
            return (collate(fetch(self.dataset, indices)) for indices in sampler)
        return iter(
            DataLoader(
                self.dataset,
                batch_sampler=sampler,
                num_workers=self.num_workers,
                collate_fn=collate,
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
