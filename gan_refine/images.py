"""Sample grids as PNG files (pillow), written atomically."""

import io
import math

import numpy as np
import torch

__all__ = ["to_uint8", "image_grid", "save_image_grid", "save_image_pair"]


def to_uint8(images):
    """[-1, 1] float NCHW -> uint8 NHWC, quantised the way StyleGAN and EDM save images.

    Non-finite values become 0 (mid grey) so a diverged sample is visible, not a crash.
    """
    x = torch.nan_to_num(images.detach().to(torch.float32).cpu(), nan=0.0, posinf=1.0, neginf=-1.0)
    x = (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(images, cols=None):
    """Tile a batch into one uint8 array [rows*H, cols*W, C] with C in {1, 3}.

    Images with 2 or more than 3 channels show their first three (or first) channels, so toy
    data still produces a picture.
    """
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    if c == 2:
        arr = arr[..., :1]
    elif c > 3:
        arr = arr[..., :3]
    c = arr.shape[-1]
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = arr[i]
    return grid


def save_image_grid(images, path, cols=None):
    """Write a PNG grid of `images` ([-1, 1], NCHW) to `path` atomically; returns the path."""
    return _save_png(image_grid(images, cols), path)


def save_image_pair(before, after, path, cols=None, scale=1):
    """Write two grids side by side (`before` left, `after` right) with a white gutter of one
    eighth of an image; `scale` enlarges every pixel to scale x scale (for tiny images)."""
    left, right = image_grid(before, cols), image_grid(after, cols)
    if left.shape != right.shape:
        raise ValueError(f"before and after grids differ in shape: {left.shape} vs {right.shape}")
    h, _, c = left.shape
    gutter = np.full([h, max(1, before.shape[-1] // 8), c], 255, dtype=np.uint8)
    pair = np.concatenate([left, gutter, right], axis=1)
    if scale > 1:
        pair = pair.repeat(scale, axis=0).repeat(scale, axis=1)
    return _save_png(pair, path)


def _save_png(grid, path):
    from PIL import Image

    from .snapshot import atomic_write_bytes
    img = Image.fromarray(grid[..., 0], "L") if grid.shape[-1] == 1 else Image.fromarray(grid, "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
