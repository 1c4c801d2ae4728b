"""The real-data term (`--data PATH --data-weight W`): a discriminator head on the fake score's
features, in the manner of DMD2 (Yin et al. 2024) and SiDA (Zhou et al. 2024).

Diff-Instruct needs no data. When the user has the training images, a small classifier head
reads the fake score's deepest encoder activations of a noised image, x + sigma * n, and is
trained with the fake score (same optimiser, same steps) to tell noised real images from noised
generated ones; the generator gets a non-saturating GAN loss through it, with weight W on top of
its Diff-Instruct loss. The fake score's encoder learns from both its denoising loss and the
head's, as in DMD2. W = 0 is the plain, data-free method.

Only the images the user points at are read, and only their training images should be given:
the benchmarks pass the digits training split, never the held-out one.
"""

import contextlib

import torch
import torch.nn.functional as F

from .fake_augment import _inner_unet

__all__ = ["DataTermError", "EncoderFeatures", "DiscriminatorHead", "discriminator_terms",
           "generator_terms", "TensorData", "as_data"]


class DataTermError(ValueError):
    """The data term cannot run with these networks or data; the message says what to do."""


class _Reached(Exception):
    """Raised by the feature hook to stop a forward pass once the features are in hand."""


class EncoderFeatures:
    """Runs a score network up to the end of its encoder and returns those activations
    ([N, C, r, r]); the decoder is not run. Works for EDM's UNets (an `enc` ModuleDict)."""

    def __init__(self, score):
        unet = _inner_unet(score)
        enc = getattr(unet, "enc", None)
        if not isinstance(enc, torch.nn.ModuleDict) or len(enc) == 0:
            raise DataTermError("--data needs an EDM teacher (its UNet's encoder feeds the "
                                "discriminator head); this teacher is not one: refine without --data")
        self.score = score
        self.layer = list(enc.values())[-1]

    def __call__(self, x, sigma, c=None):
        got = {}

        def hook(module, args, out):
            got["features"] = out
            raise _Reached

        handle = self.layer.register_forward_hook(hook)
        try:
            self.score(x, sigma, c)
        except _Reached:
            pass
        finally:
            handle.remove()
        if "features" not in got:
            raise DataTermError("the score network's forward did not reach its encoder's last block")
        return got["features"].float()

    @torch.no_grad()
    def shape(self, channels, resolution, label_dim, device):
        """(C, r) of the features, from a probe forward of one image."""
        x = torch.zeros([1, channels, resolution, resolution], device=device)
        c = torch.zeros([1, label_dim], device=device) if label_dim else None
        was = self.score.training
        self.score.eval()
        try:
            f = self(x, torch.ones([1], device=device), c)
        finally:
            self.score.train(was)
        return int(f.shape[1]), int(f.shape[2])


class DiscriminatorHead(torch.nn.Module):
    """Features [N, C, r, r] -> one logit per image: 3x3 conv, group norm, SiLU, an r x r conv
    to 1 x 1, SiLU, linear."""

    def __init__(self, channels, resolution, width=None):
        super().__init__()
        width = int(width or channels)
        self.conv = torch.nn.Conv2d(channels, width, 3, padding=1)
        groups = 1
        for g in (32, 16, 8, 4, 2):   # the most groups of at least 4 channels each
            if width % g == 0 and width // g >= 4:
                groups = g
                break
        self.norm = torch.nn.GroupNorm(groups, width)
        self.reduce = torch.nn.Conv2d(width, width, resolution)
        self.out = torch.nn.Linear(width, 1)

    def forward(self, features):
        h = F.silu(self.norm(self.conv(features)))
        h = F.silu(self.reduce(h)).flatten(1)
        return self.out(h).squeeze(1)


def discriminator_terms(head, real_features, fake_features):
    """Per-sample non-saturating losses of the head: softplus(-D(real)) and softplus(D(fake)),
    the fake features detached from the generator. Returns (real terms, fake terms)."""
    return F.softplus(-head(real_features)), F.softplus(head(fake_features.detach()))


def generator_terms(head, features):
    """Per-sample non-saturating generator loss softplus(-D(G(z))); gradients reach the generator
    through the features (the caller freezes the head's and the fake score's parameters)."""
    return F.softplus(-head(features))


@contextlib.contextmanager
def frozen(module):
    """Parameters of `module` without gradients for the duration of a block."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


class TensorData:
    """Real images held in memory: a float tensor [N, C, H, W] in [-1, 1], optional labels
    (one-hot [N, label_dim] or class indices [N]). Same `sample` as datasets.ImageDataset."""

    def __init__(self, images, labels=None, label_dim=0):
        images = torch.as_tensor(images, dtype=torch.float32)
        if images.ndim != 4:
            raise DataTermError(f"real images must be [N, C, H, W], got shape {tuple(images.shape)}")
        self.images = images
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.ndim == 1:
                labels = F.one_hot(labels.long(), int(label_dim or int(labels.max()) + 1))
            labels = labels.float()
        self.labels = labels
        self.num_items, self.channels = images.shape[0], images.shape[1]
        self.resolution = images.shape[2]
        self.label_dim = 0 if labels is None else labels.shape[1]
        self.has_labels = labels is not None

    def __len__(self):
        return self.num_items

    def sample(self, n, generator=None, device=None):
        idx = torch.randint(self.num_items, (n,), generator=generator)
        lab = None if self.labels is None else self.labels[idx].to(device)
        return self.images[idx].to(device), lab


def as_data(data, resolution, channels, label_dim):
    """The real images of the data term as an object with `sample(n, generator, device)`: a
    path (image folder, dataset zip, .npy/.npz), a tensor (or an (images, labels) pair), or such
    an object already; checked against the generator's resolution, channels and labels."""
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        from .datasets import open_dataset
        return open_dataset(data, resolution=resolution, channels=channels, label_dim=label_dim)
    if torch.is_tensor(data) or isinstance(data, (tuple, list)):
        images, labels = (data, None) if torch.is_tensor(data) else data
        data = TensorData(images, labels, label_dim)
    if not callable(getattr(data, "sample", None)):
        raise DataTermError(f"cannot use {type(data).__name__} as real data: pass a path, a tensor of "
                            f"images in [-1, 1], or an object with sample(n, generator, device)")
    if (data.resolution, data.channels) != (resolution, channels):
        raise DataTermError(f"the real images are {data.channels}x{data.resolution}x{data.resolution} but "
                            f"the generator makes {channels}x{resolution}x{resolution}")
    if label_dim and not data.has_labels:
        raise DataTermError("the generator is conditional, so the real images need class labels")
    if label_dim and data.label_dim != label_dim:
        raise DataTermError(f"the real images have {data.label_dim} classes but the generator has {label_dim}")
    return data
