"""Augmentation of the fake score's training images, with augment labels (`--augment P`).

The official Diff-Instruct code trains its fake score as EDM trained the teacher: each image is
augmented (flips, translations, scaling, rotation, ...) with probability P per transform, and
the network is told which augmentation it got through EDM's "augment labels", so it learns the
distribution of every augmented version and, with zero labels, the plain one. Only the fake
score's own denoising loss sees augmented images; the generator's gradient always compares
both scores with zero augment labels, so the target distribution is unchanged (the
augmentation does not leak). What it buys is a fake score that generalises from fewer
generator samples, as it did for EDM's teachers on small data sets.

Which pipe:
- a teacher trained with augment labels (EDM's CIFAR-10 models: augment_dim 9) keeps its own
  meaning of them: the teacher pickle's `augment_pipe` is used, at probability P;
- a teacher without them (augment_dim 0, such as the digits teachers) gets this module's
  `GeometricAugment`, and the fake score (a copy of the teacher) gets a new augment-label input
  initialised to zero, so it starts as an exact copy of the teacher.
"""

import copy
import math

import torch
import torch.nn.functional as F

__all__ = ["GeometricAugment", "AugmentError", "augment_dim_of", "add_augment_input", "resolve_augment"]


class AugmentError(ValueError):
    """The requested augmentation does not fit the teacher; the message says what to do."""


class GeometricAugment(torch.nn.Module):
    """Per-sample geometric augmentation returning (images, augment labels).

    Each transform is applied to a sample with probability p: x-flip, y-flip, an integer
    translation (uniform, up to `translate` of the size), isotropic scaling (log2-normal, std
    `scale_std`), a rotation (uniform over the circle), anisotropic scaling (log2-normal, std
    `aniso_std`) and a fractional translation (normal, std `frac_std` of the size). They are
    composed into one affine map per sample and applied by one bilinear resampling with
    symmetric (mirror) padding (flips are applied exactly, before it).

    Labels, LABEL_DIM = 10 per sample, all zero for an unaugmented image: x-flip, y-flip,
    integer translation x and y (fractions of the size), log2 scale, sin and cos - 1 of the
    rotation, log2 anisotropy, fractional translation x and y.
    """

    LABEL_DIM = 10
    TRANSFORMS = ("xflip", "yflip", "translate", "scale", "rotate", "aniso", "frac")

    def __init__(self, p=0.12, translate=0.125, scale_std=0.2, aniso_std=0.2, frac_std=0.125,
                 transforms=TRANSFORMS):
        super().__init__()
        if not 0 <= p <= 1:
            raise AugmentError(f"augment probability must be in [0, 1], got {p}")
        unknown = sorted(set(transforms) - set(self.TRANSFORMS))
        if unknown:
            raise AugmentError(f"unknown transform(s) {', '.join(unknown)}; choose from {', '.join(self.TRANSFORMS)}")
        self.p = float(p)
        self.translate, self.scale_std = float(translate), float(scale_std)
        self.aniso_std, self.frac_std = float(aniso_std), float(frac_std)
        self.transforms = tuple(transforms)

    def forward(self, images):
        n, _, h, w = images.shape
        dev, dt = images.device, torch.float32
        zero = torch.zeros([n], device=dev, dtype=dt)

        def maybe(name, values):
            # Every transform draws its coin and values, used or not: the same stream either way.
            coin = torch.rand([n], device=dev) < self.p
            return torch.where(coin, values.to(dt), zero) if name in self.transforms else zero

        xflip = maybe("xflip", torch.ones([n], device=dev))
        yflip = maybe("yflip", torch.ones([n], device=dev))
        # Whole-pixel translations, as fractions of the size.
        tx = maybe("translate", torch.round((torch.rand([n], device=dev) * 2 - 1) * self.translate * w) / w)
        ty = maybe("translate", torch.round((torch.rand([n], device=dev) * 2 - 1) * self.translate * h) / h)
        log_s = maybe("scale", torch.randn([n], device=dev) * self.scale_std)
        angle = maybe("rotate", (torch.rand([n], device=dev) * 2 - 1) * math.pi)
        log_a = maybe("aniso", torch.randn([n], device=dev) * self.aniso_std)
        fx = maybe("frac", torch.randn([n], device=dev) * self.frac_std)
        fy = maybe("frac", torch.randn([n], device=dev) * self.frac_std)
        labels = torch.stack([xflip, yflip, tx, ty, log_s, torch.sin(angle), torch.cos(angle) - 1,
                              log_a, fx, fy], dim=1)

        # The map from output to input coordinates, in affine_grid's [-1, 1] units: output pixel
        # u is read from input position A u + b. Built as the inverse of the image transform
        # flip -> translate -> scale -> rotate -> anisotropy -> fractional translate.
        # Flips first, exactly; the rest by one resampling where a sample has any of it.
        fx_mask = (xflip > 0).reshape(-1, 1, 1, 1)
        fy_mask = (yflip > 0).reshape(-1, 1, 1, 1)
        images = torch.where(fx_mask, torch.flip(images, dims=[3]), images)
        images = torch.where(fy_mask, torch.flip(images, dims=[2]), images)
        sx = torch.exp2(-log_s - log_a)
        sy = torch.exp2(-log_s + log_a)
        c, s = torch.cos(angle), torch.sin(angle)
        # inverse rotation R(-angle), then the inverse scalings and flips (diagonal)
        a11, a12 = c * sx, s * sx
        a21, a22 = -s * sy, c * sy
        # translations in [-1, 1] units (a fraction f of the size is 2f)
        ttx, tty = 2 * (tx + fx), 2 * (ty + fy)
        b1 = -(a11 * ttx + a12 * tty)
        b2 = -(a21 * ttx + a22 * tty)
        theta = torch.stack([torch.stack([a11, a12, b1], 1), torch.stack([a21, a22, b2], 1)], 1)
        grid = F.affine_grid(theta, [n, images.shape[1], h, w], align_corners=False)
        out = F.grid_sample(images.to(dt), grid.to(dt), mode="bilinear", padding_mode="reflection",
                            align_corners=False).to(images.dtype)
        # Samples with nothing to resample stay bit for bit (no rounding, no host sync).
        kept = (labels[:, 2:] == 0).all(dim=1).reshape(-1, 1, 1, 1)
        return torch.where(kept, images, out), labels.to(images.dtype)

    def extra_repr(self):
        return f"p={self.p}, translate={self.translate}, scale_std={self.scale_std}, " \
               f"aniso_std={self.aniso_std}, frac_std={self.frac_std}"


def _inner_unet(fake_score):
    """The network inside an EDM preconditioner (EDMPrecond.model), or None."""
    module = getattr(fake_score, "module", fake_score)   # the adapter's wrapped module
    return getattr(module, "model", None)


def augment_dim_of(fake_score):
    """How many augment labels the score network takes (0 when none); None when it has no
    augment-label input at all (not an EDM network)."""
    unet = _inner_unet(fake_score)
    if unet is None or not hasattr(unet, "map_augment"):
        return None
    m = unet.map_augment
    return 0 if m is None else int(m.weight.shape[1])


def add_augment_input(fake_score, label_dim):
    """Give an EDM score network without augment labels a new, zero-initialised augment-label
    input of `label_dim`, so it computes exactly what it did for any labels until trained."""
    unet = _inner_unet(fake_score)
    if unet is None or getattr(unet, "map_augment", 0) is not None:
        raise AugmentError("this fake score cannot take a new augment-label input (it is not an EDM "
                           "network without one)")
    # The embedding the labels are added to has map_layer0's input width.
    width = unet.map_layer0.weight.shape[1]
    ref = unet.map_layer0.weight
    layer = torch.nn.Linear(label_dim, width, bias=False, device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        layer.weight.zero_()
    unet.map_augment = layer
    return layer


def resolve_augment(p, fake_score, pickle_pipe=None):
    """The augmentation for `--augment p` with this fake score (a copy of the teacher, not yet
    trained): the teacher pickle's pipe where the teacher takes augment labels, else ours, in
    which case the fake score gets its augment-label input here. Returns the pipe (None for
    p == 0). Raises AugmentError with what to do when they do not fit."""
    if p <= 0:
        return None
    if p > 1:
        raise AugmentError(f"--augment is a probability in [0, 1], got {p} (the official value is 0.12)")
    dim = augment_dim_of(fake_score)
    if dim is None:
        raise AugmentError("--augment needs an EDM teacher (its networks take EDM's augment labels); "
                           "this teacher is not one: refine without --augment")
    if dim > 0:
        if pickle_pipe is None:
            raise AugmentError(f"the teacher was trained with {dim} augment labels, but its pickle holds "
                               f"no augment_pipe that makes them; use a teacher pickle that has one "
                               f"(EDM's training snapshots do) or refine without --augment")
        pipe = copy.deepcopy(pickle_pipe)
        if not hasattr(pipe, "p"):
            raise AugmentError("the teacher pickle's augment_pipe has no probability 'p' to set; "
                               "refine without --augment")
        pipe.p = float(p)
        probe = torch.zeros([1, fake_score.img_channels, fake_score.img_resolution, fake_score.img_resolution])
        ref = next(iter(fake_score.parameters()))
        _, labels = pipe(probe.to(ref.device))
        if labels is None or labels.shape[-1] != dim:
            got = None if labels is None else labels.shape[-1]
            raise AugmentError(f"the teacher pickle's augment_pipe makes {got} augment labels but the "
                               f"teacher takes {dim}; refine without --augment")
        return pipe
    pipe = GeometricAugment(p)
    add_augment_input(fake_score, GeometricAugment.LABEL_DIM)
    return pipe
