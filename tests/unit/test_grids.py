"""The grid picture: samples shown at 96 pixels or more, whole-factor nearest-neighbour, thin borders."""

import torch
from PIL import Image

from bifamily.evaluation.images import save_grid
from bifamily.grids import BORDER, MIN_TILE, grid_picture, upscale_factor
from bifamily.rundir import RunWriter


def test_64_samples_of_32_pixels_show_at_96_pixels_each_with_a_thin_border(tmp_path):
    images = torch.rand(64, 3, 32, 32) * 2 - 1
    out = RunWriter(tmp_path).save_grid("samples", 5, images, nrow=8)
    side = 8 * (96 + BORDER) + BORDER
    assert Image.open(out).size == (side, side)
    assert 2 <= BORDER <= 3


def test_upscaling_repeats_pixels_and_the_border_is_white():
    image = torch.tensor([[-1.0, 1.0], [1.0, -1.0]]).expand(2, 3, 2, 2)
    picture = grid_picture(image, nrow=2)
    factor = upscale_factor(2)
    assert factor * 2 >= MIN_TILE and (factor - 1) * 2 < MIN_TILE
    tile = picture[:, BORDER : BORDER + 2 * factor, BORDER : BORDER + 2 * factor]
    expected = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).repeat_interleave(factor, 0).repeat_interleave(factor, 1)
    assert torch.equal(tile, expected.expand(3, -1, -1))
    assert torch.all(picture[:, :BORDER] == 1.0) and torch.all(picture[:, :, -BORDER:] == 1.0)


def test_large_images_are_not_upscaled_and_the_cli_grid_matches_the_run_grid(tmp_path):
    assert upscale_factor(128) == 1 and upscale_factor(64) == 2 and upscale_factor(32) == 3
    images = torch.rand(6, 1, 128, 128) * 2 - 1
    out = save_grid(tmp_path / "sub" / "grid.png", images, nrow=3)
    assert Image.open(out).size == (3 * (128 + BORDER) + BORDER, 2 * (128 + BORDER) + BORDER)
    run_grid = RunWriter(tmp_path).save_grid("samples", 0, images, nrow=3)
    assert Image.open(out).tobytes() == Image.open(run_grid).tobytes()
