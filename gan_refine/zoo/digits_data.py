"""The 8x8 digits set that ships inside scikit-learn, as images for our models.

1,797 grey-scale digits (values 0..16), 10 classes. We upsample them to `res` x `res` with
bilinear interpolation (align_corners=False), scale to [-1, 1] like GAN/EDM training data, and
split once with a fixed permutation: 1,437 training images and 360 held-out test images.
"""

import numpy as np
import torch

NUM_CLASSES = 10
SPLIT_SEED = 20261126   # fixed: every model and metric uses the same held-out images
NUM_TEST = 360


def load_digits_images(res=16):
    """All images as float32 [N, 1, res, res] in [-1, 1] and int64 labels [N]."""
    from sklearn.datasets import load_digits  # scikit-learn ships the data inside its wheel
    raw = load_digits()
    x = torch.as_tensor(raw.images, dtype=torch.float32)[:, None] / 16.0   # [N,1,8,8] in [0,1]
    if res != 8:
        x = torch.nn.functional.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
    x = (x * 2 - 1).clamp(-1, 1)
    y = torch.as_tensor(raw.target, dtype=torch.int64)
    return x, y


def load_digits_split(res=16):
    """(x_train, y_train, x_test, y_test) with a fixed held-out split of NUM_TEST images."""
    x, y = load_digits_images(res)
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(x))
    test, train = perm[:NUM_TEST], perm[NUM_TEST:]
    return x[train], y[train], x[test], y[test]
