"""Images and sample grids as PNG files (pillow), written atomically.

Grids are meant to be read at a glance: cells are separated by a thin gutter, and small images
are enlarged by a whole factor (nearest neighbour, so no pixel is invented) until each cell is
at least `min_cell` pixels wide. 16 px digits are shown 4x, 32 px CIFAR images 2x.
"""

import io
import math

import numpy as np
import torch

__all__ = ["to_uint8", "grid_scale", "image_grid", "save_png", "save_image_grid", "save_image_pair",
           "MIN_CELL", "GUTTER", "GUTTER_VALUE"]

MIN_CELL = 64       # smallest cell side, in output pixels, that upscaling aims for
GUTTER = 4          # output pixels between neighbouring cells
GUTTER_VALUE = 128  # mid grey: visible against dark and light images alike
PAIR_GUTTER_VALUE = 255  # the band between the two grids of a pair is white and wider


def to_uint8(images):
    """[-1, 1] float NCHW -> uint8 NHWC, quantised the way StyleGAN and EDM save images.

    Non-finite values become 0 (mid grey) so a diverged sample is visible, not a crash.
    """
    x = torch.nan_to_num(images.detach().to(torch.float32).cpu(), nan=0.0, posinf=1.0, neginf=-1.0)
    x = (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid_scale(height, width, min_cell=MIN_CELL):
    """The whole enlargement factor that makes a height x width image at least `min_cell` wide
    and tall (1 for images that already are)."""
    side = max(1, min(int(height), int(width)))
    return max(1, math.ceil(min_cell / side)) if min_cell else 1


def _displayable(arr):
    """uint8 NHWC with 1 or 3 channels: 2 channels show the first, more than 3 the first three,
    so toy data still produces a picture."""
    c = arr.shape[-1]
    if c == 2:
        return arr[..., :1]
    if c > 3:
        return arr[..., :3]
    return arr


def image_grid(images, cols=None, scale=None, gutter=GUTTER, gutter_value=GUTTER_VALUE,
               min_cell=MIN_CELL):
    """Tile a batch into one uint8 array [H', W', C] with C in {1, 3}.

    images: float NCHW in [-1, 1] (quantised as StyleGAN does) or uint8 NHWC.
    cols: images per row (default: a square-ish grid). Row-major, in batch order.
    scale: whole enlargement factor of every pixel; None picks grid_scale(H, W, min_cell).
    gutter: output pixels between cells (not around the border), filled with gutter_value.
    `scale=1, gutter=0` gives the plain tiling StyleGAN's grids use.
    """
    if torch.is_tensor(images):
        arr = to_uint8(images)
    else:
        arr = np.asarray(images)
        if arr.dtype != np.uint8 or arr.ndim != 4:
            raise ValueError("image_grid takes float NCHW tensors in [-1, 1] or uint8 NHWC arrays")
    arr = _displayable(arr)
    n, h, w, c = arr.shape
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    scale = grid_scale(h, w, min_cell) if scale is None else int(scale)
    if scale < 1 or gutter < 0:
        raise ValueError(f"need scale >= 1 and gutter >= 0, got scale={scale}, gutter={gutter}")
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    cols = max(1, min(int(cols), n)) if cols else int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.full([rows * h + (rows - 1) * gutter, cols * w + (cols - 1) * gutter, c],
                   gutter_value, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = r * (h + gutter), k * (w + gutter)
        grid[y:y + h, x:x + w] = arr[i]
    return grid


def save_png(array, path):
    """Write a uint8 [H, W] / [H, W, 1] (greyscale) or [H, W, 3] (RGB) array as a PNG, atomically
    (a temporary file in the same folder, then os.replace); returns the path."""
    from PIL import Image

    from .snapshot import atomic_write_bytes
    array = np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise ValueError(f"save_png takes uint8 [H, W], [H, W, 1] or [H, W, 3], got {array.dtype} "
                         f"{list(array.shape)}")
    img = Image.fromarray(array, "L" if array.ndim == 2 else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def save_image_grid(images, path, cols=None, scale=None, gutter=GUTTER):
    """Write a PNG grid of `images` ([-1, 1], NCHW) to `path` atomically; returns the path.
    Small images are enlarged (see image_grid); `scale=1, gutter=0` writes the plain tiling."""
    return save_png(image_grid(images, cols, scale=scale, gutter=gutter), path)


def save_image_pair(before, after, path, cols=None, scale=None, gutter=GUTTER):
    """Write two grids side by side (`before` left, `after` right), each with gutters between
    its cells, separated by a white band a quarter of a cell wide (at least 8 px).

    scale: None enlarges small images automatically (see grid_scale); an integer forces it.
    """
    if tuple(before.shape) != tuple(after.shape):
        raise ValueError(f"before and after differ in shape: {tuple(before.shape)} vs "
                         f"{tuple(after.shape)}")
    h, w = before.shape[-2], before.shape[-1]
    scale = grid_scale(h, w) if scale is None else int(scale)
    left = image_grid(before, cols, scale=scale, gutter=gutter)
    right = image_grid(after, cols, scale=scale, gutter=gutter)
    band = np.full([left.shape[0], max(8, w * scale // 4), left.shape[2]], PAIR_GUTTER_VALUE,
                   dtype=np.uint8)
    return save_png(np.concatenate([left, band, right], axis=1), path)
