"""The data pipeline alone: how many training images per second the recipe's BatchStream delivers.

Measured on the recipe's own data set and loader settings (``train.num_workers``). A recipe that
reads an image folder (the full-size models) is pointed at a folder of generated JPEGs of ImageNet's
typical size, so decoding, random-resized cropping and resizing cost what they cost on real data.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bifamily.build import make_context
from bifamily.data import BatchStream
from bifamily.recipe import Recipe
from bifamily.preflight import open_data

from .training import load_recipe

JPEG_SIZE = (500, 375)  # ImageNet's most common image size
JPEG_QUALITY = 90


def write_jpeg_folder(root: Path, images: int) -> None:
    """An ImageNet-style folder (train/ and val/, two classes) of smooth random JPEGs."""
    rng = np.random.default_rng(0)
    width, height = JPEG_SIZE
    for split in ("train", "val"):
        for index in range(images):
            folder = root / split / f"class_{index % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, size=(height // 25, width // 25, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize(JPEG_SIZE, Image.Resampling.BICUBIC)
            image.save(folder / f"{index:05d}.jpg", quality=JPEG_QUALITY)


def _stream_rate(recipe: Recipe, batches: int) -> dict[str, Any]:
    train_data, _ = open_data(recipe, make_context(recipe))
    t = recipe.train
    stream = BatchStream(train_data, t.batch_size, recipe.run.seed, t.num_workers)
    next(stream)  # starts the loader (and its workers)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": batches * t.batch_size / seconds,
        "batch_size": t.batch_size,
        "num_workers": t.num_workers,
        "batches_timed": batches,
        "data": recipe.kinds["data"],
    }


def pipeline_rate(path: str, overrides: tuple[str, ...], batches: int, jpeg_images: int) -> dict[str, Any]:
    """Images/s of the recipe's training stream (run in a child: it may write a JPEG folder)."""
    recipe = load_recipe(path, overrides)
    if recipe.kinds["data"] != "image_folder":
        return _stream_rate(recipe, batches)
    with tempfile.TemporaryDirectory() as folder:
        write_jpeg_folder(Path(folder), jpeg_images)
        result = _stream_rate(load_recipe(path, (*overrides, f'data.root="{folder}"')), batches)
    return {**result, "jpeg_size": list(JPEG_SIZE)}
