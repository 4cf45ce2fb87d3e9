"""`load_images` (behind `bifamily reconstruct --images`) reads files as the image-folder data set does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bifamily.errors import DataError
from bifamily.evaluation.images import load_images


def test_images_are_flattened_like_the_data_set_and_bad_files_skipped(tmp_path):
    Image.new("RGBA", (20, 30), (0, 0, 255, 0)).save(tmp_path / "a_transparent.png")
    Image.fromarray(np.full((20, 20), 100 * 257, dtype=np.uint16)).save(tmp_path / "b_gray16.png")
    (tmp_path / "c_corrupt.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "d_red.png")
    with pytest.warns(UserWarning, match="skipped 1 undecodable file.*c_corrupt.jpg"):
        images = load_images(tmp_path, channels=3, size=8, n=3)
    assert images.shape == (3, 3, 8, 8)
    assert torch.allclose(images[0], torch.ones(3, 8, 8))  # fully transparent: white, not blue or black
    assert torch.allclose(images[1], torch.full((3, 8, 8), 100 / 127.5 - 1))  # scaled, not clipped to white
    assert torch.allclose(images[2], torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 8, 8))


def test_only_undecodable_files_is_a_clear_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG nothing")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="none of the 1 image files can be decoded"):
        load_images(tmp_path, channels=1, size=8, n=4)
