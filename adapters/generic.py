"""Any PyTorch generator `(z, c) -> img` and any callable denoiser `(x, sigma, c) -> x0`.

For networks from repositories gan_refine knows nothing about: the caller states the metadata
(or the module carries it as attributes of the same names) and the adapter does the rest.
"""

import inspect

import torch
from torch import nn

from .base import GeneratorAdapter, TeacherAdapter, _first_device

__all__ = ["GenericGeneratorAdapter", "GenericTeacherAdapter"]


def _positional_arity(fn):
    """Number of positional parameters `fn` takes (None when it takes *args or is opaque)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _attr(module, name, given):
    return given if given is not None else getattr(module, name, None)


class GenericGeneratorAdapter(GeneratorAdapter):
    """Wraps an nn.Module `module(z, c) -> img` (or `module(z) -> img` when c_dim == 0).

    Args:
        module: the generator; its output must be NCHW images in [-1, 1].
        z_dim, c_dim, img_resolution, img_channels: metadata; each defaults to the module's
            attribute of the same name. c_dim defaults to 0. When img_resolution or
            img_channels is unknown, one dry forward (batch 2, eval mode, no grad, global RNG
            state restored afterwards) reads them off the output shape.
        pass_c: whether to call `module(z, c)`; by default True when c_dim > 0 or when the
            forward takes two positional arguments.
    """

    family = "generic"

    def __init__(self, module, z_dim=None, c_dim=None, img_resolution=None, img_channels=None,
                 pass_c=None):
        if not isinstance(module, nn.Module):
            raise TypeError(f"a generator must be a torch.nn.Module, got {type(module).__name__}")
        z_dim = _attr(module, "z_dim", z_dim)
        c_dim = _attr(module, "c_dim", c_dim) or 0
        if z_dim is None:
            raise ValueError(f"cannot tell the latent size of {type(module).__name__}: "
                             f"pass z_dim=")
        if pass_c is None:
            arity = _positional_arity(module.forward)
            pass_c = c_dim > 0 or arity is None or arity >= 2
        if c_dim > 0 and not pass_c:
            raise ValueError("a class-conditional generator (c_dim > 0) must take c: pass_c=True")
        pass_c = bool(pass_c)
        img_resolution = _attr(module, "img_resolution", img_resolution)
        img_channels = _attr(module, "img_channels", img_channels)
        if img_resolution is None or img_channels is None:
            shape = _dry_run_shape(module, int(z_dim), int(c_dim), pass_c)
            if shape[2] != shape[3]:
                raise ValueError(f"{type(module).__name__} makes {shape[2]}x{shape[3]} images; "
                                 f"only square images are supported")
            img_channels = shape[1] if img_channels is None else img_channels
            img_resolution = shape[2] if img_resolution is None else img_resolution
        super().__init__(module, z_dim, c_dim, img_resolution, img_channels)
        self.pass_c = pass_c

    def _generate(self, z, c):
        return self.module(z, c) if self.pass_c else self.module(z)


def _dry_run_shape(module, z_dim, c_dim, pass_c):
    device = _first_device(module)
    was_training = module.training
    # Eval mode so BatchNorm statistics are not touched; forked RNG so the probe does not
    # shift the caller's random stream (refinement must be reproducible).
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        module.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            z = torch.randn([2, z_dim], device=device)
            c = torch.zeros([2, c_dim], device=device)
            if c_dim:
                c[:, 0] = 1
            out = module(z, c) if pass_c else module(z)
    finally:
        module.train(was_training)
    if not torch.is_tensor(out) or out.ndim != 4 or out.shape[0] != 2:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"{type(module).__name__} returned {got} for a batch of 2 latents; "
                         f"a generator must return NCHW images")
    return tuple(out.shape)


class GenericTeacherAdapter(TeacherAdapter):
    """Wraps any callable denoiser `fn(x, sigma, c) -> D(x; sigma)` in the EDM convention.

    x is NCHW in data units, sigma a float32 [N, 1, 1, 1] tensor, c a float32 one-hot
    [N, label_dim] tensor or None when label_dim == 0. Metadata defaults to the callable's
    attributes of the same names; sigma range and sigma_data default to EDM's 0.002, 80, 0.5.
    Set `pass_c=False` for a callable that takes only (x, sigma).
    """

    family = "generic"

    def __init__(self, fn, img_resolution=None, img_channels=None, label_dim=None,
                 sigma_min=None, sigma_max=None, sigma_data=None, pass_c=True):
        if not callable(fn):
            raise TypeError(f"a teacher must be callable, got {type(fn).__name__}")
        img_resolution = _attr(fn, "img_resolution", img_resolution)
        img_channels = _attr(fn, "img_channels", img_channels)
        if img_resolution is None or img_channels is None:
            raise ValueError(f"cannot tell what images {type(fn).__name__} denoises: pass "
                             f"img_resolution= and img_channels= (and label_dim= if conditional)")
        label_dim = _attr(fn, "label_dim", label_dim) or 0
        if label_dim and not pass_c:
            raise ValueError("a class-conditional teacher (label_dim > 0) must take c")
        sigma_min = _attr(fn, "sigma_min", sigma_min)
        sigma_max = _attr(fn, "sigma_max", sigma_max)
        sigma_min = 0.002 if not sigma_min else sigma_min
        sigma_max = 80.0 if sigma_max is None or sigma_max == float("inf") else sigma_max
        sigma_data = _attr(fn, "sigma_data", sigma_data)
        super().__init__(fn, img_resolution, img_channels, label_dim, sigma_min=sigma_min,
                         sigma_max=sigma_max, sigma_data=0.5 if sigma_data is None else sigma_data)
        self.pass_c = bool(pass_c)

    def _denoise(self, x, sigma, c):
        return self.module(x, sigma, c) if self.pass_c else self.module(x, sigma)
