"""Which held-out images a run shows in its reconstruction grids.

The first items of a split can all be one class (an image folder is listed class by class), so the
grid takes a seeded subset instead: round-robin over the labels when the data set has them, a seeded
random subset otherwise. The same seed gives the same images at every interval and on resume, so
grids compare across steps.
"""

from __future__ import annotations

from typing import Any

import torch

from bifamily.data import fetch

POOL_PER_IMAGE = 8  # without a `labels` attribute: labels are read for this many candidates per image


def spread_indices(data: Any, n: int, seed: int) -> list[int]:
    """Up to ``n`` indices of ``data``, drawn with ``seed``, spanning its classes as evenly as it can."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    if getattr(data, "num_classes", 0) <= 0:
        return order[:n].tolist()
    labels = getattr(data, "labels", None)
    if labels is not None:
        pool, pool_labels = order, torch.as_tensor(labels, dtype=torch.int64)[order]
    else:
        pool = order[: n * POOL_PER_IMAGE]
        pool_labels = torch.tensor([label for _, label in fetch(data, pool.tolist())], dtype=torch.int64)
    labelled = pool_labels >= 0
    pool, pool_labels = pool[labelled], pool_labels[labelled]
    # Each candidate's rank among the earlier candidates of its class: all rank-0 items come first
    # (one per class, in class order), then all rank-1 items, and so on.
    by_class = torch.argsort(pool_labels, stable=True)
    counts = torch.bincount(pool_labels)
    class_start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(by_class)
    rank[by_class] = torch.arange(len(pool)) - class_start[pool_labels[by_class]]
    key = rank * len(counts) + pool_labels
    return pool[torch.argsort(key, stable=True)[:n]].tolist()


def display_images(data: Any, n: int, seed: int) -> torch.Tensor:
    """The images of :func:`spread_indices` stacked as (n, C, R, R)."""
    return torch.stack([image for image, _ in fetch(data, spread_indices(data, n, seed))])
