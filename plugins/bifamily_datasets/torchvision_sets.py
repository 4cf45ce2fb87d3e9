"""The standard data sets of the papers, read through torchvision's own classes from a local folder.

Nothing is downloaded unless the recipe says ``download = true``. The files are laid out exactly as
torchvision stores them under ``root`` (``cifar-10-batches-py/``, ``MNIST/raw/``, ``stl10_binary/``,
``train_32x32.mat``, ``celeba/``), so a folder torchvision filled elsewhere can be used as it is.

Images become the project's format here: (channels, R, R) float32 in [-1, 1] at ``ctx.data_resolution``
(antialiased resize; CelebA's aligned 178x218 faces are centre-cropped to 140x140 first, as is usual
for CelebA GANs), grey and colour converted to ``ctx.channels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bifamily.config import InvalidValue, one_of, option
from bifamily.context import BuildContext
from bifamily.errors import DataError, RecipeError

from .common import channels_option, check_build, encoder_resolution_option, index_tensor, resolution_option, to_unit_range

if TYPE_CHECKING:
    import torchvision

CELEBA_CROP = 140
_GREY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601 luma, as PIL's "L" mode


@attrs.frozen
class Source:
    """One named data set: its torchvision class, where that class looks, and what it can give."""

    class_name: str
    folder: str  # under root, as torchvision lays it out
    max_resolution: int  # larger would only upsample
    train_splits: tuple[str, ...] = ("train",)


SOURCES = {
    "mnist": Source("MNIST", "MNIST/raw", 32),
    "fashion_mnist": Source("FashionMNIST", "FashionMNIST/raw", 32),
    "cifar10": Source("CIFAR10", "cifar-10-batches-py", 32),
    "svhn": Source("SVHN", ".", 32),
    "stl10": Source("STL10", "stl10_binary", 96, ("train", "unlabeled", "train+unlabeled")),
    "celeba": Source("CelebA", "celeba", CELEBA_CROP),
}


def _known_train_split(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    source = SOURCES.get(instance.name)
    if source is not None and value not in source.train_splits:
        raise InvalidValue(
            attribute.name, f"{instance.name} has no training split {value!r}; its splits: {', '.join(source.train_splits)}"
        )


class TensorImages(Dataset):
    """uint8 images (N, C, H, W) held in memory, cropped, resized and converted a batch at a time.

    ``for_evaluation`` is the labelled split that evaluation reads in place of this one (STL-10 trains
    on unlabelled images; its probe and k-NN use the labelled training images).
    """

    def __init__(
        self,
        pixels: torch.Tensor,
        labels: torch.Tensor,
        class_names: list[str],
        *,
        resolution: int,
        channels: int,
        for_evaluation: Dataset | None = None,
    ):
        self.pixels = pixels
        self.labels = labels
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.resolution = resolution
        self.channels = channels
        self.for_evaluation = self if for_evaluation is None else for_evaluation

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        index = index_tensor(indices, len(self))
        images = project_format(self.pixels.index_select(0, index), self.resolution, self.channels)
        return list(zip(images.unbind(0), self.labels.index_select(0, index).tolist()))


class CelebAFaces(Dataset):
    """CelebA's aligned faces, decoded per item by torchvision's class; unlabelled (``num_classes`` 0)."""

    num_classes = 0
    class_names: list[str] = []

    def __init__(self, faces: torchvision.datasets.CelebA, resolution: int, channels: int):
        self.faces = faces
        self.resolution = resolution
        self.channels = channels

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        from torchvision.transforms.functional import center_crop, pil_to_tensor

        index = index_tensor(indices, len(self)).tolist()
        crops = [pil_to_tensor(center_crop(self.faces[i][0].convert("RGB"), CELEBA_CROP)) for i in index]
        images = project_format(torch.stack(crops), self.resolution, self.channels)
        return [(image, -1) for image in images.unbind(0)]


def project_format(pixels: torch.Tensor, resolution: int, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) to float32 (N, channels, R, R) in [-1, 1]: centre square, antialiased resize,
    grey repeated to RGB or RGB reduced to luma."""
    from torchvision.transforms.functional import center_crop

    pixels = pixels.to(torch.float32)
    side = min(pixels.shape[-2:])
    if pixels.shape[-2] != pixels.shape[-1]:
        pixels = center_crop(pixels, [side, side])
    if side != resolution:
        pixels = F.interpolate(pixels, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    if pixels.shape[1] == 1 and channels == 3:
        pixels = pixels.repeat(1, 3, 1, 1)
    elif pixels.shape[1] == 3 and channels == 1:
        pixels = (pixels * _GREY).sum(1, keepdim=True)
    return to_unit_range(pixels.round())


@attrs.frozen
class TorchvisionConfig:
    """MNIST, Fashion-MNIST, CIFAR-10, SVHN, STL-10 or CelebA through torchvision, from a local folder;
    downloaded only with `download = true`."""

    name: str = option(
        help=(
            "Which data set: 'mnist', 'fashion_mnist', 'cifar10', 'svhn', 'stl10' (labelled, 10 classes) or "
            "'celeba' (unlabelled faces)."
        ),
        validator=one_of(*SOURCES),
    )
    root: str = option(
        "data",
        help=(
            "Folder holding the data set as torchvision stores it (cifar-10-batches-py/, MNIST/raw/, "
            "FashionMNIST/raw/, train_32x32.mat and test_32x32.mat, stl10_binary/, celeba/)."
        ),
    )
    download: bool = option(
        False,
        help="Download the data set into `root` when it is not there (torchvision's download). Never done otherwise.",
    )
    train_split: str = option(
        "train",
        help=(
            "The split G, E and D train on. STL-10: 'train' (5,000 labelled), 'unlabeled' (100,000) or "
            "'train+unlabeled'; evaluation always uses the labelled train and test splits. Others: 'train'."
        ),
        validator=_known_train_split,
    )
    resolution: int = resolution_option()
    channels: int = channels_option(3)
    encoder_resolution: int | None = encoder_resolution_option()

    def build(self, ctx: BuildContext, split: str) -> Dataset:
        check_build(ctx, split)
        self._check_resolution(ctx)
        if self.name == "celeba":
            return CelebAFaces(self._open("train" if split == "train" else "test"), ctx.data_resolution, ctx.channels)
        if split == "test":
            return self._in_memory("test", ctx)
        labelled = self._in_memory("train", ctx)
        if self.train_split == "train":
            return labelled
        unlabelled = self._in_memory(self.train_split, ctx)
        return TensorImages(
            unlabelled.pixels,
            torch.full((len(unlabelled),), -1, dtype=torch.int64),
            [],
            resolution=ctx.data_resolution,
            channels=ctx.channels,
            for_evaluation=labelled,
        )

    def _check_resolution(self, ctx: BuildContext) -> None:
        largest = SOURCES[self.name].max_resolution
        if ctx.data_resolution > largest:
            key = "encoder_resolution" if (self.encoder_resolution or 0) > self.resolution else "resolution"
            raise RecipeError(
                [f"$.data.{key}: {self.name} provides images up to {largest}x{largest}, not {ctx.data_resolution} "
                 "(larger would only upsample)"]
            )

    def _in_memory(self, split: str, ctx: BuildContext) -> TensorImages:
        found = self._open(split)
        if self.name in ("mnist", "fashion_mnist"):
            pixels, labels = found.data[:, None], found.targets
        elif self.name == "cifar10":
            pixels, labels = torch.from_numpy(found.data).permute(0, 3, 1, 2), torch.tensor(found.targets)
        else:  # svhn, stl10: (N, 3, H, W) arrays
            pixels, labels = torch.from_numpy(found.data), torch.from_numpy(np.asarray(found.labels))
        class_names = list(getattr(found, "classes", None) or [str(digit) for digit in range(10)])
        return TensorImages(
            pixels, labels.to(torch.int64), class_names, resolution=ctx.data_resolution, channels=ctx.channels
        )

    def _open(self, split: str) -> Any:
        """torchvision's data set object for ``split`` ("train", "test" or an STL-10 training split)."""
        source = SOURCES[self.name]
        root = Path(self.root).expanduser()
        if root.exists() and not root.is_dir():
            raise DataError(f"$.data.root: is a file, not a folder: {root}")
        import torchvision.datasets  # torchvision's import costs seconds: only when a data set is opened

        cls = getattr(torchvision.datasets, source.class_name)
        if self.name in ("mnist", "fashion_mnist", "cifar10"):
            arguments: dict[str, Any] = {"train": split == "train"}
        elif self.name == "celeba":
            arguments = {"split": split, "target_type": []}
        else:
            arguments = {"split": split}
        try:
            return cls(str(root), download=self.download, **arguments)
        except Exception as exc:  # torchvision raises RuntimeError when files are missing, anything when a download fails
            if self.download:
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                raise DataError(
                    f"$.data.download: downloading {self.name} into {root} failed ({reason}); without a network, "
                    f"copy torchvision's files into {root / source.folder}"
                ) from None
            if isinstance(exc, RuntimeError) and "not found" in str(exc).lower():
                raise DataError(
                    f"$.data.root: {self.name} not found in {(root / source.folder).resolve()}; "
                    "add --set data.download=true (or download = true in [data]) to download it"
                ) from None
            raise DataError(f"$.data.root: cannot read {self.name} in {root}: {type(exc).__name__}: {exc}") from None
