"""Sample grids: quantisation, gutters between cells, whole-factor enlargement of small images."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from gan_refine.images import (GUTTER, GUTTER_VALUE, grid_scale, image_grid, save_image_grid,
                               save_image_pair, to_uint8)


def test_to_uint8_matches_upstream_formula():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 3.0, float("nan")]).reshape(1, 1, 1, 7)
    got = to_uint8(x)[0, 0, :, 0]
    expected = [0, 64, 128, 255, 255, 255, 128]  # floor(x * 127.5 + 128), clamped; NaN -> grey
    assert got.tolist() == expected


@pytest.mark.parametrize("side, scale", [(8, 8), (16, 4), (24, 3), (32, 2), (64, 1), (1024, 1)])
def test_grid_scale_reaches_min_cell(side, scale):
    assert grid_scale(side, side) == scale
    assert side * scale >= 64


def _cells(n, h, w, c=1):
    """n images whose every pixel holds a distinct, non-grey value per image."""
    values = np.arange(n, dtype=np.uint8) * 20 + 10
    return np.broadcast_to(values[:, None, None, None], [n, h, w, c]).copy(), values


def test_grid_layout_gutters_and_scale():
    arr, values = _cells(5, 8, 6)
    grid = image_grid(arr, cols=3)
    scale = grid_scale(8, 6)           # 6 px wide -> 11x: 66 px cells
    assert scale == 11
    h, w, g = 8 * scale, 6 * scale, GUTTER
    assert grid.shape == (2 * h + g, 3 * w + 2 * g, 1)
    for i, v in enumerate(values):
        r, k = divmod(i, 3)
        cell = grid[r * (h + g):r * (h + g) + h, k * (w + g):k * (w + g) + w]
        assert (cell == v).all()
    # Gutters: the columns and rows between cells, and the empty sixth cell, are grey.
    assert (grid[:, w:w + g] == GUTTER_VALUE).all()
    assert (grid[:, 2 * w + g:2 * w + 2 * g] == GUTTER_VALUE).all()
    assert (grid[h:h + g, :] == GUTTER_VALUE).all()
    assert (grid[h + g:, 2 * (w + g):] == GUTTER_VALUE).all()


def test_nearest_neighbour_enlargement_keeps_every_pixel():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, [1, 16, 16, 3], dtype=np.uint8)
    grid = image_grid(img)
    assert grid.shape == (64, 64, 3)
    np.testing.assert_array_equal(grid[::4, ::4], img[0])
    np.testing.assert_array_equal(grid[3::4, 2::4], img[0])


def test_plain_tiling_still_available():
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    grid = image_grid(x, cols=2, scale=1, gutter=0)
    assert grid.shape == (16, 16, 3)
    np.testing.assert_array_equal(grid[8:, :8], to_uint8(x)[2])


def test_channel_counts():
    assert image_grid(torch.zeros(2, 1, 4, 4)).shape[-1] == 1
    assert image_grid(torch.zeros(2, 2, 4, 4)).shape[-1] == 1
    assert image_grid(torch.zeros(2, 5, 4, 4)).shape[-1] == 3


def test_save_grid_and_pair(tmp_path):
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    path = save_image_grid(x, tmp_path / "grid.png", cols=2)
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (2 * 64 + GUTTER, 2 * 64 + GUTTER)
        np.testing.assert_array_equal(np.asarray(im), image_grid(x, cols=2)[..., 0])
    path = save_image_pair(x, -x, tmp_path / "pair.png", cols=2)
    with Image.open(path) as im:
        band = 64 // 4
        side = 2 * 64 + GUTTER
        assert im.size == (2 * side + band, side)
        a = np.asarray(im)
        assert (a[:, side:side + band] == 255).all()
        np.testing.assert_array_equal(a[:, :side], image_grid(x, cols=2)[..., 0])
        np.testing.assert_array_equal(a[:, side + band:], image_grid(-x, cols=2)[..., 0])
    with Image.open(save_image_pair(x, x, tmp_path / "pair1.png", cols=2, scale=1)) as im:
        assert im.size == (2 * (32 + GUTTER) + 8, 32 + GUTTER)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]


def test_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        save_image_pair(torch.zeros(4, 1, 8, 8), torch.zeros(2, 1, 8, 8), "x.png")
    with pytest.raises(ValueError, match="at least one image"):
        image_grid(torch.zeros(0, 3, 8, 8))
