"""MNIST (or any 10-class data set in MNIST's idx format) read from local idx files, raw or gzipped.

With the four standard files in ``root``, "train" is the 60,000 training images and "test" the t10k
file. With only the t10k files (the test split alone, as shipped for offline benchmarks), "train" is
its first N - ``holdout`` images and "test" the last ``holdout``.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bifamily.config import non_negative, option
from bifamily.context import BuildContext
from bifamily.errors import DataError

from .common import (
    channels_option,
    check_build,
    encoder_resolution_option,
    index_tensor,
    resolution_option,
    root_folder,
    to_unit_range,
)

NUM_CLASSES = 10
_UNSIGNED_BYTE = 0x08
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An idx file of unsigned bytes with ``ndim`` dimensions, as a uint8 tensor; DataError if malformed."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"$.data.root: cannot read {path}: {exc}") from None
    header = 4 + 4 * ndim
    if len(data) < header or data[:2] != b"\0\0" or data[2] != _UNSIGNED_BYTE or data[3] != ndim:
        raise DataError(
            f"$.data.root: malformed idx file {path}: expected magic 0x0000080{ndim} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''}), got 0x{data[:4].hex()}"
        )
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(shape)
    if len(data) != expected or 0 in shape:
        raise DataError(
            f"$.data.root: malformed idx file {path}: header says shape {tuple(shape)} "
            f"({expected} bytes), file has {len(data)} bytes"
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (root / name).is_file():
            return root / name
    return None


def _read_pair(root: Path, split_files: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, H, W) uint8, labels (N,) int64) from the image and label files of one split."""
    image_stem, label_stem = _FILES[split_files]
    image_path, label_path = _find(root, image_stem), _find(root, label_stem)
    for stem, path in ((image_stem, image_path), (label_stem, label_path)):
        if path is None:
            raise DataError(f"$.data.root: {stem}[.gz] not found in {root}")
    images = read_idx(image_path, 3)
    labels = read_idx(label_path, 1).long()
    if len(labels) != len(images):
        raise DataError(
            f"$.data.root: {label_path} has {len(labels)} labels for the {len(images)} images "
            f"of {image_path}"
        )
    if int(labels.max()) >= NUM_CLASSES:
        raise DataError(
            f"$.data.root: {label_path} has label {int(labels.max())}; expected 0..{NUM_CLASSES - 1}"
        )
    return images, labels


def load_split(root: Path, split: str, holdout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of ``split``, from the full file set or from the t10k files alone."""
    if _find(root, _FILES["train"][0]) is not None:
        return _read_pair(root, split)
    if _find(root, _FILES["test"][0]) is None:
        raise DataError(
            f"$.data.root: no MNIST idx files in {root} (expected {_FILES['train'][0]}[.gz] "
            f"or {_FILES['test'][0]}[.gz])"
        )
    images, labels = _read_pair(root, "test")
    if not 0 < holdout < len(images):
        raise DataError(
            f"$.data.holdout: {holdout} must be between 1 and {len(images) - 1}: {root} has only the "
            f"{len(images)} t10k images, split into train (the first N - holdout) and test"
        )
    cut = len(images) - holdout
    return (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])


class IdxImages(Dataset):
    """Grayscale uint8 images held in memory, resized to ``resolution`` a batch at a time."""

    class_names = [str(digit) for digit in range(NUM_CLASSES)]
    num_classes = NUM_CLASSES

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, resolution: int, channels: int):
        self.images = images
        self.labels = labels
        self.resolution = resolution
        self.channels = channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        index = index_tensor(indices, len(self))
        pixels = self.images.index_select(0, index)[:, None].to(torch.float32)
        if pixels.shape[-2:] != (self.resolution, self.resolution):
            size = (self.resolution, self.resolution)
            pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
        images = to_unit_range(pixels).repeat(1, self.channels, 1, 1)
        return list(zip(images.unbind(0), self.labels.index_select(0, index).tolist()))


@attrs.frozen
class MnistConfig:
    """MNIST digits from local idx files (never downloaded); 10 classes."""

    root: str = option(
        help=(
            "Folder holding the idx files (raw or .gz): train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; or only the two t10k files."
        )
    )
    resolution: int = resolution_option()
    channels: int = channels_option(1)
    encoder_resolution: int | None = encoder_resolution_option()
    holdout: int = option(
        2000,
        help="With only the t10k files in `root`: how many of its last images form the test split.",
        validator=non_negative,
    )

    def build(self, ctx: BuildContext, split: str) -> IdxImages:
        check_build(ctx, split)
        images, labels = load_split(root_folder(self.root), split, self.holdout)
        return IdxImages(images, labels, ctx.data_resolution, ctx.channels)
