"""Decoding one image file the way every part of bifamily reads images: upright, flattened, cropped.

The image-folder data set and ``bifamily reconstruct --images`` share this, so an image looks the
same to a model whichever way it arrives: EXIF orientation applied, transparency composited over
white, 16-bit grayscale scaled (not clipped) to 8 bits, a box cropped and resized to a square.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
"""File name endings (lower case) that are read as images."""

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that turn the image by 90 degrees


@attrs.frozen
class Crop:
    """A box (left, top, width, height) in pixels and whether to mirror the result."""

    left: float
    top: float
    width: float
    height: float
    flip: bool = False

    def box(self, scale_x: float = 1.0, scale_y: float = 1.0) -> tuple[float, float, float, float]:
        """(left, upper, right, lower) as PIL wants it, in an image scaled by (scale_x, scale_y)."""
        return (
            self.left * scale_x,
            self.top * scale_y,
            (self.left + self.width) * scale_x,
            (self.top + self.height) * scale_y,
        )


def centre_square(width: int, height: int, u: Sequence[float] = ()) -> Crop:
    """The largest centred square, not mirrored: evaluation preprocessing."""
    side = min(width, height)
    return Crop((width - side) / 2, (height - side) / 2, side, side)


def flatten(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in ``mode`` ("RGB" or "L"); transparent parts are composited over white.

    16-bit grayscale is scaled to 8 bits (PIL's own conversion would clip it to white).
    """
    if image.mode.startswith("I"):
        image = image.convert("I").point(lambda value: value / 257)
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in image.info:
        return image.convert(mode)
    foreground = image.convert("RGBA")
    background = Image.new("RGBA", foreground.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, foreground).convert(mode)


def load_crop(
    path: Path, mode: str, resolution: int, choose: Callable[[int, int], Crop] = centre_square
) -> torch.Tensor:
    """Decode ``path`` upright, crop the box ``choose(width, height)`` picks, resize it to a square.

    JPEGs are decoded at the smallest DCT scale (1/8, 1/4, 1/2 or 1) that still leaves the box at
    least ``resolution`` pixels a side, which saves most of the decoding time of large photographs.
    Returns uint8 (C, resolution, resolution). Raises whatever PIL raises for a file it cannot decode.
    """
    with Image.open(path) as image:
        turned = image.getexif().get(_EXIF_ORIENTATION, 1) in _SWAPS_AXES
        width, height = image.size[::-1] if turned else image.size
        crop = choose(width, height)
        needed = (
            math.ceil(width * resolution / max(crop.width, 1.0)),
            math.ceil(height * resolution / max(crop.height, 1.0)),
        )
        image.draft("L" if mode == "L" else None, needed[::-1] if turned else needed)
        ImageOps.exif_transpose(image, in_place=True)
        upright = flatten(image, mode)
        left, top, right, bottom = crop.box(upright.width / width, upright.height / height)
        # Cut the whole pixels around the box first: the resize filter must not reach outside it.
        outer = (math.floor(left), math.floor(top), math.ceil(right), math.ceil(bottom))
        inner = (left - outer[0], top - outer[1], right - outer[0], bottom - outer[1])
        size = (resolution, resolution)
        square = upright.crop(outer).resize(size, Image.Resampling.BILINEAR, box=inner)
    from torchvision.transforms.v2.functional import horizontal_flip, pil_to_tensor  # costly import: on first use

    pixels = pil_to_tensor(square)
    return horizontal_flip(pixels) if crop.flip else pixels
