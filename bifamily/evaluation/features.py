"""Run a frozen network over the first ``n`` items of a labelled data set."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bifamily.data import collate
from bifamily.errors import DataError


def require_labels(dataset: Dataset, what: str) -> int:
    """The data set's number of classes; a DataError when it has none (``num_classes == 0``)."""
    num_classes = int(getattr(dataset, "num_classes", 0))
    if num_classes <= 0:
        raise DataError(
            f"{what} needs class labels, but the data set {type(dataset).__name__} has no labels "
            "(num_classes = 0); use a labelled data set for this evaluation"
        )
    return num_classes


def iterate_batches(
    dataset: Dataset, n: int | None, batch_size: int, num_workers: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """(images, int64 labels) batches over items 0..n-1 in order.

    The DataLoader fetches each batch through the data set's ``__getitems__`` when it has one.
    """
    available = len(dataset)
    n = available if n is None else n
    if not 0 < n <= available:
        raise DataError(f"asked for {n} items of a data set of {available} ({type(dataset).__name__})")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    batches = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    yield from DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers)


def resize_images(images: Tensor, size: int) -> Tensor:
    """Antialiased bilinear resize of NCHW images to size x size (a no-op at that size already)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def extract_features(
    fn: Callable[[Tensor], Tensor],
    dataset: Dataset,
    n: int | None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    resize_to: int | None = None,
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """``fn`` over the first ``n`` items (all when None): float32 features (n, F) and int64 labels (n,).

    Runs under ``torch.inference_mode``; images go to ``device`` (resized to ``resize_to`` first when
    given), results come back to the CPU. ``fn`` is e.g. an encoder's ``features`` or a function
    returning its posterior mean; put the network in eval mode before calling.
    """
    features, labels = [], []
    with torch.inference_mode():
        for images, batch_labels in iterate_batches(dataset, n, batch_size, num_workers):
            images = images.to(device, non_blocking=True)
            if resize_to is not None:
                images = resize_images(images, resize_to)
            features.append(fn(images).flatten(1).float().cpu())
            labels.append(batch_labels)
    return torch.cat(features), torch.cat(labels).long()
