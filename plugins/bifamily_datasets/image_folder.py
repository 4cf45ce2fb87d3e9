"""Images from a folder on disk, decoded lazily with PIL, centre-cropped or augmented.

Files that cannot be decoded (corrupt, truncated, not really images) are found when first read. Such
an item is replaced by the next decodable file in index order (wrapping around), with that file's
label and the requested item's crop; each bad file is reported once with a warning and counted in
``num_skipped`` (per process: DataLoader workers keep their own count). Training never stops on one.

Augmentation is reproducible for an exact resume: the crop and flip of item ``i`` depend only on
(seed, epoch, i). The trainer calls ``set_epoch`` at the start of every epoch (before it creates the
DataLoader iterator, which copies the data set into worker processes).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
from torch.utils.data import Dataset

from bifamily.config import in_range, one_of, option
from bifamily.context import BuildContext
from bifamily.errors import DataError
from bifamily.image_decoding import load_crop

from .common import (
    channels_option,
    check_build,
    encoder_resolution_option,
    index_tensor,
    resolution_option,
    root_folder,
    to_unit_range,
)
from .counter_rng import key_of, uniforms
from .crops import CROPS, UNIFORMS_PER_CROP
from .image_files import list_split

class ImageFolderDataset(Dataset):
    """Labelled (or unlabelled: label -1, ``num_classes`` 0) images from files, decoded per item.

    File names and labels are kept in two flat arrays rather than a list of Python objects: with
    DataLoader workers, touching a million small objects would copy them into every worker.
    """

    def __init__(
        self,
        root: Path,
        paths: list[Path],
        labels: list[int],
        class_names: list[str],
        *,
        resolution: int,
        channels: int,
        augment: str,
        seed: int,
    ):
        self.root = root
        self._names = np.array([os.fsencode(path.relative_to(root)) for path in paths], dtype=np.bytes_)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.resolution = resolution
        self.mode = "L" if channels == 1 else "RGB"
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.undecodable: set[int] = set()

    def path(self, index: int) -> Path:
        return self.root / os.fsdecode(self._names[index])

    @property
    def num_skipped(self) -> int:
        """Files found undecodable so far in this process."""
        return len(self.undecodable)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call at the start of each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        index = index_tensor(indices, len(self))
        draws = uniforms(key_of(self.seed, self.epoch), index, UNIFORMS_PER_CROP).tolist()
        return [self._item(i, u) for i, u in zip(index.tolist(), draws)]

    def _item(self, index: int, u: list[float]) -> tuple[torch.Tensor, int]:
        choose = functools.partial(CROPS[self.augment], u=u)
        for candidate in self._decodable_from(index):
            try:
                pixels = load_crop(self.path(candidate), self.mode, self.resolution, choose)
            except Exception as exc:  # PIL raises many types for bad files; none may stop training
                self.undecodable.add(candidate)
                warnings.warn(
                    f"skipping undecodable image {self.path(candidate)} ({type(exc).__name__}: {exc}); "
                    f"{self.num_skipped} file(s) skipped so far",
                    stacklevel=2,
                )
                continue
            return to_unit_range(pixels), int(self.labels[candidate])
        raise DataError(
            f"$.data.root: none of the {len(self)} image files under {self.root} can be decoded"
        )

    def _decodable_from(self, index: int) -> Iterator[int]:
        """``index``, then the following indices (wrapping around), skipping known-bad files."""
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            if candidate not in self.undecodable:
                yield candidate


@attrs.frozen
class ImageFolderConfig:
    """Your own images: a folder of class sub-folders (ImageNet style) or of unlabelled images."""

    root: str = option(
        help=(
            "Image folder: root/train/<class>/* with root/val/<class>/* (ImageNet layout); or "
            "root/<class>/*, split by `holdout_fraction`; or root/* without classes (unlabelled)."
        )
    )
    resolution: int = resolution_option()
    channels: int = channels_option(3)
    encoder_resolution: int | None = encoder_resolution_option()
    augment: str = option(
        "none",
        help=(
            "Training preprocessing: 'none' (centre square, resized), 'resnet' (random resized crop, "
            "area [0.08, 1], aspect [3/4, 4/3], + flip) or 'distorted' (compare_gan: square crop of "
            "area [0.5, 1], + flip). The test split is always centre-cropped."
        ),
        validator=one_of(*CROPS),
    )
    holdout_fraction: float = option(
        0.1,
        help=(
            "Without root/train: the fraction of images held out for the test split, chosen by a hash "
            "of each file's path (stable when files are added)."
        ),
        validator=in_range(0.0, 1.0),
    )
    seed: int = option(0, help="Seed of the augmentation: item i's crop depends on (seed, epoch, i).")

    def build(self, ctx: BuildContext, split: str) -> ImageFolderDataset:
        check_build(ctx, split)
        root = root_folder(self.root)
        files = list_split(root, split, self.holdout_fraction)
        return ImageFolderDataset(
            root,
            files.paths,
            files.labels,
            files.class_names,
            resolution=ctx.data_resolution,
            channels=ctx.channels,
            augment=self.augment if split == "train" else "none",
            seed=self.seed,
        )
