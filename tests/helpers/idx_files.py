"""Writes idx files (MNIST's format) so the tests can feed the mnist data set without the real files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` as an unsigned-byte idx file at ``path``, gzip-compressed when it ends in ``.gz``."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
