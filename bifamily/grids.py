"""The one picture of an image grid: every PNG of samples or reconstructions is drawn here.

Samples are upscaled by a whole factor (nearest neighbour, so no pixel is invented or blurred) until
each shows at :data:`MIN_TILE` pixels or more, and separated by a thin white border: 64 samples of
32x32 at their own size make a 256-pixel picture that is too small to judge by eye.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

MIN_TILE = 96
BORDER = 2


def upscale_factor(side: int) -> int:
    """The smallest whole factor that shows a ``side``-pixel image at ``MIN_TILE`` pixels or more."""
    return max(1, math.ceil(MIN_TILE / side))


def grid_picture(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1] as one (C', H', W') float picture in [0, 1], ``nrow`` per row."""
    images = images.detach().float().cpu()
    factor = upscale_factor(min(images.shape[-2:]))
    if factor > 1:
        images = F.interpolate(images, scale_factor=factor, mode="nearest")
    images = ((images + 1.0) / 2.0).clamp_(0.0, 1.0)
    from torchvision.utils import make_grid  # torchvision's import costs seconds: only when drawing

    return make_grid(images, nrow=nrow, padding=BORDER, pad_value=1.0)


def write_grid(path: Path, images: torch.Tensor, nrow: int) -> None:
    """Save :func:`grid_picture` of ``images`` as a PNG at ``path`` (its folder must exist)."""
    from torchvision.utils import save_image

    save_image(grid_picture(images, nrow), path)
