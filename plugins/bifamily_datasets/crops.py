"""Crop geometry of the image-folder preprocessing options, drawn from an item's own uniforms.

Every option reads the same fixed number of uniforms per item (UNIFORMS_PER_CROP), so a crop is a
pure function of (seed, epoch, index) and never of what other items drew. Boxes are in (possibly
fractional) pixels of the upright image; the resize that follows samples them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs

from bifamily.image_decoding import Crop, centre_square

TRIES = 10  # attempts at a box that fits before falling back to the centre square
UNIFORMS_PER_CROP = 2 * TRIES + 3
_LEFT, _TOP, _FLIP = 2 * TRIES, 2 * TRIES + 1, 2 * TRIES + 2

RESNET_AREA = (0.08, 1.0)
RESNET_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
DISTORTED_AREA = (0.5, 1.0)


def _placed(width: int, height: int, box_w: float, box_h: float, u: Sequence[float]) -> Crop:
    return Crop((width - box_w) * u[_LEFT], (height - box_h) * u[_TOP], box_w, box_h, u[_FLIP] < 0.5)


def _fallback(width: int, height: int, u: Sequence[float]) -> Crop:
    return attrs.evolve(centre_square(width, height), flip=u[_FLIP] < 0.5)


def random_resized(width: int, height: int, u: Sequence[float]) -> Crop:
    """ResNet's augmentation: area in [0.08, 1] of the image, aspect ratio in [3/4, 4/3] (log-uniform),
    at a uniform position, mirrored half the time."""
    for attempt in range(TRIES):
        area = width * height * (RESNET_AREA[0] + (RESNET_AREA[1] - RESNET_AREA[0]) * u[2 * attempt])
        log_ratio = RESNET_LOG_RATIO[0] + (RESNET_LOG_RATIO[1] - RESNET_LOG_RATIO[0]) * u[2 * attempt + 1]
        ratio = math.exp(log_ratio)
        box_w, box_h = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if box_w <= width and box_h <= height:
            return _placed(width, height, box_w, box_h, u)
    return _fallback(width, height, u)


def distorted(width: int, height: int, u: Sequence[float]) -> Crop:
    """compare_gan's "distorted" crop: a square of area in [0.5, 1] of the image at a uniform position,
    mirrored half the time."""
    for attempt in range(TRIES):
        area = width * height * (DISTORTED_AREA[0] + (DISTORTED_AREA[1] - DISTORTED_AREA[0]) * u[attempt])
        side = math.sqrt(area)
        if side <= min(width, height):
            return _placed(width, height, side, side, u)
    return _fallback(width, height, u)


CROPS: dict[str, Callable[[int, int, Sequence[float]], Crop]] = {
    "none": centre_square,
    "resnet": random_resized,
    "distorted": distorted,
}
