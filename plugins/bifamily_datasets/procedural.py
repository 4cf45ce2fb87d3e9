"""The built-in data set: coloured shapes rendered on the fly, nothing on disk, nothing downloaded.

An item is a shape (its label) at a random position, size and rotation, in a random foreground colour
on a random background colour with at least a fixed luminance contrast (or, as options, a light
shape on a dark background, or light on dark and dark on light in equal shares), plus mild pixel
noise. Every random number of item ``i`` is a hash of (seed, split, i), so an item never changes,
whatever batch or worker draws it, and the train and test splits never share an item's parameters.

Rendering is vectorised over a batch: the items are sorted by class and each class's run is drawn
with one call of its signed distance function, whose value gives anti-aliased pixel coverage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch
from torch.utils.data import Dataset

from bifamily.config import InvalidValue, in_range, one_of, option, positive
from bifamily.context import BuildContext

from .common import (
    channels_option,
    check_build,
    encoder_resolution_option,
    index_tensor,
    resolution_option,
)
from .counter_rng import key_of, uniforms
from .shapes import SHAPES

MIN_CONTRAST = 0.35  # |luminance(fg) - luminance(bg)|, colours in [0, 1]
NOISE_STD = 0.03  # in [0, 1] colour units
NOISE_TILES = 8  # noise comes from a small seeded bank of double-size tiles, cropped per item
_LUMA = torch.tensor([0.299, 0.587, 0.114])
COLOUR_SCHEMES = ("contrasting", "light_on_dark", "light_or_dark")
_SPLIT_IDS = {"train": 0, "test": 1}

# Columns of an item's uniforms.
_SIZE, _X, _Y, _ANGLE = 0, 1, 2, 3
_FG, _BG = slice(4, 7), slice(7, 10)
_TILE, _NOISE_X, _NOISE_Y = 10, 11, 12
_POLARITY = 13
_COLUMNS = 14


class ProceduralShapes(Dataset):
    """A virtual data set of ``length`` shape images; item ``i`` has label ``i % num_classes``."""

    def __init__(
        self,
        *,
        key: int,
        length: int,
        classes: int,
        resolution: int,
        channels: int,
        radius_range: tuple[float, float],
        placement: float = 1.0,
        colours: str = "contrasting",
    ):
        self.key = key
        self.length = length
        self.num_classes = classes
        self.class_names = list(SHAPES)[:classes]
        self.resolution = resolution
        self.channels = channels
        self.radius_range = radius_range
        self.placement = placement
        self.colours = colours
        self._sdfs = list(SHAPES.values())[:classes]
        noise_rng = torch.Generator().manual_seed(key)
        self._noise = NOISE_STD * torch.randn(
            (NOISE_TILES, channels, 2 * resolution, 2 * resolution), generator=noise_rng
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        images, labels = self.render(indices)
        return list(zip(images.unbind(0), labels.tolist()))

    def render(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, C, R, R) in [-1, 1] and labels (N,) for a batch of indices."""
        index = index_tensor(indices, self.length)
        labels = index % self.num_classes
        order = torch.argsort(labels, stable=True)  # one contiguous run of items per shape
        u = uniforms(self.key, index[order], _COLUMNS)
        coverage = self._coverage(labels[order], u)
        foreground, background = self._colours(u)
        images = self._noise_for(u)
        images.add_(background[:, :, None, None])
        images.addcmul_(coverage[:, None], (foreground - background)[:, :, None, None])
        images.mul_(2).sub_(1).clamp_(-1, 1)
        return images.index_select(0, torch.argsort(order)), labels

    def _coverage(self, labels: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """(N, R, R) fraction of each pixel covered by the item's shape; ``labels`` sorted."""
        side = self.resolution
        low, high = self.radius_range
        radius = side * (low + (high - low) * u[:, _SIZE])
        centre_x = radius + (side - 2 * radius) * self._placed(u[:, _X])
        centre_y = radius + (side - 2 * radius) * self._placed(u[:, _Y])
        angle = 2 * math.pi * u[:, _ANGLE]
        pixel = torch.arange(side, dtype=torch.float32) + 0.5
        dx = pixel[None, None, :] - centre_x[:, None, None]
        dy = pixel[None, :, None] - centre_y[:, None, None]
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        scale = radius[:, None, None]
        local_x = (cos * dx + sin * dy) / scale
        local_y = (cos * dy - sin * dx) / scale
        distance = torch.empty(len(labels), side, side)
        start = 0
        for label, count in enumerate(torch.bincount(labels, minlength=self.num_classes).tolist()):
            run = slice(start, start + count)
            if count:
                distance[run] = self._sdfs[label](local_x[run], local_y[run])
            start += count
        return (0.5 - distance * scale).clamp_(0, 1)

    def _placed(self, u: torch.Tensor) -> torch.Tensor:
        """Where in the free room a centre lies (0..1): the middle ``placement`` fraction of it."""
        if self.placement == 1:  # the full room, bit for bit as drawn
            return u
        return 0.5 + self.placement * (u - 0.5)

    def _colours(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C) foreground and background colours in [0, 1] with enough luminance contrast."""
        foreground, background = u[:, _FG], u[:, _BG]
        if self.colours != "contrasting":
            foreground, background = 0.5 + 0.5 * foreground, 0.25 * background
            if self.colours == "light_or_dark":
                dark = (u[:, _POLARITY] < 0.5)[:, None]
                foreground, background = (
                    torch.where(dark, background, foreground),
                    torch.where(dark, foreground, background),
                )
            if self.channels == 1:
                return (foreground @ _LUMA)[:, None], (background @ _LUMA)[:, None]
            return foreground, background
        fg_luma, bg_luma = foreground @ _LUMA, background @ _LUMA
        brighter = ((fg_luma >= bg_luma) & (bg_luma <= 1 - MIN_CONTRAST)) | (bg_luma < MIN_CONTRAST)
        target = brighter.to(torch.float32)  # mix towards white when brighter, else black
        wanted = torch.where(brighter, bg_luma + MIN_CONTRAST, bg_luma - MIN_CONTRAST)
        short = torch.where(brighter, wanted - fg_luma, fg_luma - wanted).clamp(min=0)
        mix = (short / (target - fg_luma).abs().clamp(min=1e-6)).clamp(max=1)
        foreground = foreground + mix[:, None] * (target[:, None] - foreground)
        if self.channels == 1:
            return (foreground @ _LUMA)[:, None], (background @ _LUMA)[:, None]
        return foreground, background

    def _noise_for(self, u: torch.Tensor) -> torch.Tensor:
        """(N, C, R, R) noise: a window, at a per-item offset, of a tile of the seeded bank."""
        side = self.resolution
        tiles = (u[:, _TILE] * NOISE_TILES).long().tolist()
        lefts = (u[:, _NOISE_X] * side).long().tolist()
        tops = (u[:, _NOISE_Y] * side).long().tolist()
        return torch.stack(
            [
                self._noise[tile, :, top : top + side, left : left + side]
                for tile, top, left in zip(tiles, tops, lefts)
            ]
        )


def _not_below_min_radius(config: ProceduralConfig, attribute: attrs.Attribute, value: float) -> None:
    if value < config.min_radius:
        raise InvalidValue(attribute.name, f"must be >= min_radius ({config.min_radius}), got {value}")


@attrs.frozen
class ProceduralConfig:
    """Coloured shapes generated on the fly from a seed: the offline built-in data set.

    Labels are the shape; position, size, rotation and colours vary per image, so a linear probe on
    an encoder's features only does well if the encoder learned shape.
    """

    resolution: int = resolution_option()
    channels: int = channels_option(3)
    encoder_resolution: int | None = encoder_resolution_option()
    classes: int = option(
        10,
        help=f"Number of shape classes, the first N of: {', '.join(SHAPES)}.",
        validator=in_range(2, len(SHAPES)),
    )
    min_radius: float = option(
        0.24,
        help="Smallest shape radius, as a fraction of the image side (radii are uniform in between).",
        validator=in_range(0.05, 0.5),
    )
    max_radius: float = option(
        0.44,
        help=(
            "Largest shape radius, as a fraction of the image side. Larger shapes make an easier data "
            "set: with radii 0.34-0.47 a randomly initialised encoder probes about 54% instead of 30%."
        ),
        validator=[in_range(0.05, 0.5), _not_below_min_radius],
    )
    placement: float = option(
        1.0,
        help=(
            "Fraction of the free room, around the middle, over which a shape's centre varies: 1 "
            "anywhere the shape fits, 0 always centred."
        ),
        validator=in_range(0.0, 1.0),
    )
    colours: str = option(
        "contrasting",
        help=(
            "'contrasting': random foreground and background colours with a luminance contrast of at "
            f"least {MIN_CONTRAST}, the shape lighter or darker; 'light_on_dark': every channel of the "
            "foreground in [0.5, 1] and of the background in [0, 0.25] (an easier data set); "
            "'light_or_dark': the same two colour bands, the shape light on dark or, for half the "
            "images, dark on light."
        ),
        validator=one_of(*COLOUR_SCHEMES),
    )
    seed: int = option(0, help="Seed of the images; train and test draw from disjoint streams.")
    train_size: int = option(50000, help="Images in the train split (virtual length).", validator=positive)
    test_size: int = option(10000, help="Images in the test split (virtual length).", validator=positive)

    def build(self, ctx: BuildContext, split: str) -> ProceduralShapes:
        check_build(ctx, split)
        return ProceduralShapes(
            key=key_of(self.seed, _SPLIT_IDS[split]),
            length=self.train_size if split == "train" else self.test_size,
            classes=self.classes,
            resolution=ctx.data_resolution,
            channels=ctx.channels,
            radius_range=(self.min_radius, self.max_radius),
            placement=self.placement,
            colours=self.colours,
        )
