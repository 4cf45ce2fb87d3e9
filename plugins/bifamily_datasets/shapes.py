"""Signed distance functions of the procedural data set's shapes.

Each function takes local coordinates ``x, y`` (tensors of any one shape) and returns the signed
distance to the shape's outline, negative inside, in the same units. Every shape fits in the unit
disk around the origin, so a renderer can place it by scaling, rotating and translating coordinates.
The set is chosen so that shapes stay distinguishable at 16 px under any rotation: no two are
rotations of each other (there is one square, no diamond; one plus, no "x").
Distances are exact, or exact near the outline, which is all anti-aliased rendering needs.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Sdf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _length(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # The tiny offset keeps torch's CPU sqrt off its slow path for exact zeros (10x slower).
    return torch.sqrt(x * x + y * y + 1e-20)


def _box(x: torch.Tensor, y: torch.Tensor, half_w: float, half_h: float) -> torch.Tensor:
    qx = x.abs() - half_w
    qy = y.abs() - half_h
    outside = _length(qx.clamp(min=0), qy.clamp(min=0))
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _regular_polygon(x: torch.Tensor, y: torch.Tensor, sides: int, radius: float) -> torch.Tensor:
    """Fold the plane into one sector, then measure to that sector's edge (a vertical segment)."""
    sector = 2 * math.pi / sides
    angle = torch.remainder(torch.atan2(y, x) + sector / 2, sector) - sector / 2
    r = _length(x, y)
    qx = r * torch.cos(angle)
    qy = r * torch.sin(angle).abs()
    apothem = radius * math.cos(math.pi / sides)
    half_side = radius * math.sin(math.pi / sides)
    edge_y = qy.clamp(max=half_side)
    return _length(qx - apothem, qy - edge_y) * torch.sign(qx - apothem)


def disk(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _length(x, y) - 0.9


def ring(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (_length(x, y) - 0.72).abs() - 0.25


def triangle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _regular_polygon(x, y, 3, 1.0)


def square(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _box(x, y, 0.68, 0.68)


def plus(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.minimum(_box(x, y, 0.95, 0.3), _box(x, y, 0.3, 0.95))


def star(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Five-pointed star: fold into a half-sector, measure to the tip-to-notch segment."""
    sector = 2 * math.pi / 5
    angle = (torch.remainder(torch.atan2(y, x) + sector / 2, sector) - sector / 2).abs()
    r = _length(x, y)
    qx, qy = r * torch.cos(angle), r * torch.sin(angle)
    tip_x, tip_y = 1.0, 0.0
    notch_x, notch_y = 0.42 * math.cos(sector / 2), 0.42 * math.sin(sector / 2)
    ex, ey = notch_x - tip_x, notch_y - tip_y
    t = (((qx - tip_x) * ex + (qy - tip_y) * ey) / (ex * ex + ey * ey)).clamp(0, 1)
    distance = _length(qx - tip_x - t * ex, qy - tip_y - t * ey)
    inward = ex * (qy - tip_y) - ey * (qx - tip_x)  # > 0 on the origin's side of the edge
    return torch.copysign(distance, -inward)


def crescent(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.maximum(_length(x, y) - 0.9, -(_length(x - 0.45, y) - 0.7))


def heart(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A point-down square (side 1) with a half-disk on each of its two upper edges."""
    y = y + 0.073  # centres the heart's bounding box on the origin
    half_diagonal = math.sqrt(0.5)
    u = (x + y) * half_diagonal
    v = (y - x) * half_diagonal
    diamond = _box(u, v, 0.5, 0.5)
    lobe = 0.5 * half_diagonal
    lobes = torch.minimum(_length(x - lobe, y - lobe), _length(x + lobe, y - lobe)) - 0.5
    return torch.minimum(diamond, lobes)


def bar(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _box(x, y, 0.95, 0.22)


def l_shape(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x + 0.15, y + 0.15
    return torch.minimum(_box(x + 0.28, y, 0.22, 0.75), _box(x, y + 0.53, 0.5, 0.22))


def half_disk(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    y = y + 0.4
    return torch.maximum(_length(x, y) - 0.92, -y)


def two_dots(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.minimum(_length(x - 0.5, y), _length(x + 0.5, y)) - 0.4


SHAPES: dict[str, Sdf] = {
    "disk": disk,
    "ring": ring,
    "triangle": triangle,
    "square": square,
    "plus": plus,
    "star": star,
    "crescent": crescent,
    "heart": heart,
    "bar": bar,
    "l_shape": l_shape,
    "half_disk": half_disk,
    "two_dots": two_dots,
}
