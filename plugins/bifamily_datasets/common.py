"""What every data set shares: the image-geometry recipe fields, split names and index checks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from bifamily.config import one_of, option, positive
from bifamily.context import BuildContext
from bifamily.errors import DataError, RecipeError

SPLITS = ("train", "test")


def resolution_option() -> Any:
    return option(32, help="Side of the images G produces and D reads.", validator=positive)


def channels_option(default: int) -> Any:
    return option(default, help="Image channels: 1 (grayscale) or 3 (RGB).", validator=one_of(1, 3))


def encoder_resolution_option() -> Any:
    return option(
        None,
        help=(
            "Side of the images E reads; defaults to `resolution`. Images are loaded at the larger "
            "of the two sizes and resized for the other module, so both see the same crop."
        ),
        validator=attrs.validators.optional(positive),
    )


def check_build(ctx: BuildContext, split: str) -> None:
    """Reject a split name the framework never asks for and a context the data cannot fill."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if ctx.channels not in (1, 3):
        raise RecipeError([f"$.data.channels: must be 1 or 3, got {ctx.channels}"])


def root_folder(root: str) -> Path:
    """The ``root`` recipe value as an existing folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "folder not found"
        raise DataError(f"$.data.root: {what}: {path}")
    return path


def index_tensor(indices: Sequence[int] | torch.Tensor, length: int) -> torch.Tensor:
    """Indices as an int64 tensor, each checked to lie in [0, length)."""
    index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= length):
        bad = index[(index < 0) | (index >= length)][0]
        raise IndexError(f"index {int(bad)} out of range for a data set of {length} items")
    return index


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8-valued pixels (0..255, any dtype) to float32 in [-1, 1]."""
    return (pixels.to(torch.float32) / 127.5 - 1.0).clamp_(-1.0, 1.0)
