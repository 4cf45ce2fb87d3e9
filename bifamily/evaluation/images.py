"""Images in and out of evaluation: generating samples, reading a folder of images, saving grids."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from bifamily.errors import BifamilyError, DataError
from bifamily.grids import write_grid
from bifamily.image_decoding import IMAGE_EXTENSIONS, load_crop
from bifamily.interfaces import LatentPrior
from bifamily.randomness import derive_seed


@torch.inference_mode()
def generate(
    generator: nn.Module, prior: LatentPrior, n: int, *, seed: int, batch_size: int, device: torch.device | str
) -> Tensor:
    """``n`` images G(z) on the CPU, the latents drawn from a CPU generator seeded with ``seed`` (the
    same images on any device), ``batch_size`` at a time."""
    latents = torch.Generator().manual_seed(derive_seed(seed, "samples"))
    batches = []
    for start in range(0, n, batch_size):
        z = prior.sample(min(batch_size, n - start), generator=latents).to(device)
        batches.append(generator(z).float().cpu())
    return torch.cat(batches)


def load_images(folder: Path, channels: int, size: int, n: int) -> Tensor:
    """The first ``n`` decodable image files of ``folder`` (sorted by name) as (n, channels, size,
    size) in [-1, 1], read as the image-folder data set reads its test split (upright, transparency
    over white, centre square, resized). Files that cannot be decoded are skipped with one warning
    that counts them."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    if channels not in (1, 3):
        raise DataError(f"{folder}: reading image files for a {channels}-channel model is not supported (1 or 3)")
    mode = "L" if channels == 1 else "RGB"
    images, skipped = [], []
    for path in files:
        if len(images) == n:
            break
        try:
            pixels = load_crop(path, mode, size)
        except Exception:  # PIL raises many types for bad files; one must not stop the others
            skipped.append(path.name)
            continue
        images.append(pixels.to(torch.float32) / 127.5 - 1.0)
    if skipped:
        warnings.warn(f"{folder}: skipped {len(skipped)} undecodable file(s): {', '.join(skipped[:5])}", stacklevel=2)
    if not images:
        raise DataError(f"{folder}: none of the {len(files)} image files can be decoded")
    return torch.stack(images)


def save_grid(path: Path, images: Tensor, nrow: int) -> Path:
    """Images in [-1, 1] as one PNG grid (parent folders created; see :mod:`bifamily.grids`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_grid(path, images, nrow)
    except OSError as exc:
        raise BifamilyError(f"{path}: cannot write image: {exc.strerror or exc}") from None
    return path
