"""grid_sample with the settings StyleGAN's augmentation pipeline uses, twice differentiable.

Older PyTorch lacked a second derivative for grid_sample, so upstream code routed it through a
custom op when `enabled` was set. Current PyTorch differentiates grid_sample to second order
natively, so both settings of `enabled` take the same, native path; the flag is kept because
network code assigns it.
"""

import torch.nn.functional as F

enabled = False


def grid_sample(input, grid):  # pylint: disable=redefined-builtin
    """Bilinear sampling with zero padding; grid coordinates in [-1, 1] span the pixel edges
    (align_corners=False)."""
    return F.grid_sample(input=input, grid=grid, mode="bilinear", padding_mode="zeros", align_corners=False)
