"""The one interface between gan_refine and foreign networks (docs/design.md, "The one
interface").

A generator adapter turns a latent batch (and one-hot labels) into images in [-1, 1], NCHW,
float32. A teacher adapter is a denoiser in the EDM convention: D(x; sigma) is the estimate of
the clean image given x = x0 + sigma * eps. Each adapter keeps the user's network untouched as
`.module` and overrides exactly one hook (`_generate` or `_denoise`).
"""

import math

import torch
from torch import nn

__all__ = [
    "force_fp32",
    "IncompatibleModelsError",
    "GeneratorAdapter",
    "TeacherAdapter",
    "normalize_sigma",
    "normalize_labels",
]


def force_fp32(adapter):
    """Make a StyleGAN or EDM network skip its built-in fp16 layers (their `force_fp32=True`
    call argument); returns False for networks that have no such switch."""
    import inspect
    kwargs = getattr(adapter, "call_kwargs", None)
    if kwargs is None:
        return False
    try:
        params = inspect.signature(adapter.module.forward).parameters
    except (TypeError, ValueError):
        return False
    if "force_fp32" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs["force_fp32"] = True
        return True
    return False


class IncompatibleModelsError(ValueError):
    """A generator and a teacher disagree on resolution, channels or labels."""


def _first_device(module):
    if isinstance(module, nn.Module):
        for t in module.parameters():
            return t.device
        for t in module.buffers():
            return t.device
    return torch.device("cpu")


def normalize_labels(c, n, c_dim, device, what="generator"):
    """Return labels as a float32 [n, c_dim] tensor on `device`.

    Accepts None (only when c_dim == 0), one-hot/soft rows [n, c_dim], a single row [c_dim]
    (broadcast), or integer class indices [n] / a Python int (turned into one-hot rows).
    """
    if c_dim == 0:
        if c is not None and torch.is_tensor(c) and c.numel() > 0:
            raise ValueError(f"the {what} is unconditional (0 labels) but labels of shape "
                             f"{tuple(c.shape)} were given: pass c=None")
        return torch.zeros([n, 0], dtype=torch.float32, device=device)
    if c is None:
        raise ValueError(f"the {what} is class-conditional with {c_dim} labels: pass c "
                         f"(one-hot [N, {c_dim}] rows or integer class indices)")
    if isinstance(c, int):
        c = torch.full([n], c, dtype=torch.int64)
    c = torch.as_tensor(c).to(device)
    if c.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        if c.ndim == 0:
            c = c.expand(n)
        if c.ndim != 1 or (c.numel() and (c.min() < 0 or c.max() >= c_dim)):
            raise ValueError(f"class indices must be a [N] tensor of values in [0, {c_dim})")
        c = torch.nn.functional.one_hot(c.long(), c_dim)
    c = c.to(torch.float32)
    if c.ndim == 1 and c.shape[0] == c_dim:
        c = c.unsqueeze(0).expand(n, c_dim)
    if c.ndim != 2 or c.shape[1] != c_dim or c.shape[0] not in (1, n):
        raise ValueError(f"labels have shape {tuple(c.shape)}; the {what} expects [{n}, {c_dim}]")
    return c.expand(n, c_dim)


def normalize_sigma(sigma, n, device):
    """Return sigma as a float32 [n, 1, 1, 1] tensor on `device`.

    Accepts a Python number, a 0-d tensor, a [n] or [1] tensor, or a [n, 1, 1, 1] tensor.
    """
    if not torch.is_tensor(sigma):
        sigma = torch.tensor(float(sigma))
    sigma = sigma.to(device=device, dtype=torch.float32)
    if sigma.numel() == 1:
        return sigma.reshape(1, 1, 1, 1).expand(n, 1, 1, 1)
    bad_4d = sigma.ndim == 4 and sigma.shape[1:] != (1, 1, 1)
    if sigma.numel() != n or sigma.ndim not in (1, 4) or bad_4d:
        raise ValueError(f"sigma has shape {tuple(sigma.shape)}; expected a number, [{n}] or "
                         f"[{n}, 1, 1, 1]")
    return sigma.reshape(n, 1, 1, 1)


class _Adapter(nn.Module):
    family = "unknown"

    def __init__(self, module):
        super().__init__()
        # nn.Module children are registered (so .to()/.parameters() reach them); a plain
        # callable is stored as an ordinary attribute.
        self.module = module

    @property
    def device(self):
        return _first_device(self.module)

    def trainable_parameters(self):
        """Parameters an optimiser should update (all of the wrapped module's by default).

        Returned as they are: upstream pickles store modules with requires_grad off, so the
        caller switches it on for the ones it trains.
        """
        if isinstance(self.module, nn.Module):
            return list(self.module.parameters())
        return []


class GeneratorAdapter(_Adapter):
    """Base class: `forward(z, c=None)` -> images in [-1, 1], NCHW, float32.

    Subclasses implement `_generate(z, c)` with z float32 [N, z_dim] and c float32 [N, c_dim]
    (a [N, 0] tensor when unconditional).
    """

    def __init__(self, module, z_dim, c_dim, img_resolution, img_channels):
        super().__init__(module)
        self.z_dim = int(z_dim)
        self.c_dim = int(c_dim)
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)

    def _generate(self, z, c):
        raise NotImplementedError

    def forward(self, z, c=None):
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z has shape {tuple(z.shape)}; the generator expects [N, {self.z_dim}]")
        z = z.to(torch.float32)
        c = normalize_labels(c, z.shape[0], self.c_dim, z.device)
        img = self._generate(z, c)
        return img.to(torch.float32)

    def sample_latents(self, n, generator=None, device=None, label_probs=None):
        """Draw z ~ N(0, I) and labels (uniform over classes unless `label_probs` is given).

        Random numbers come from `generator` (on its own device) and are then moved to `device`
        (default: the adapter's device), so a CPU generator gives the same draws everywhere.
        Returns (z [n, z_dim], c [n, c_dim]); c is [n, 0] for unconditional generators.
        """
        device = torch.device(device) if device is not None else self.device
        rng_device = generator.device if generator is not None else device
        z = torch.randn([n, self.z_dim], generator=generator, device=rng_device)
        if self.c_dim == 0:
            c = torch.zeros([n, 0], device=rng_device)
        else:
            if label_probs is None:
                idx = torch.randint(self.c_dim, [n], generator=generator, device=rng_device)
            else:
                p = torch.as_tensor(label_probs, dtype=torch.float64, device=rng_device)
                if p.shape != (self.c_dim,) or (p < 0).any() or not p.sum() > 0:
                    raise ValueError(f"label_probs must be {self.c_dim} non-negative weights")
                idx = torch.multinomial(p / p.sum(), n, replacement=True, generator=generator)
            c = torch.nn.functional.one_hot(idx, self.c_dim).to(torch.float32)
        return z.to(device), c.to(device)

    def sample(self, n, generator=None, c=None, label_probs=None):
        """Generate n images from fresh latents; `c` overrides the drawn labels."""
        z, c_drawn = self.sample_latents(n, generator=generator, label_probs=label_probs)
        return self(z, c_drawn if c is None else c)

    def summary(self):
        return dict(family=self.family, module=type(self.module).__name__, z_dim=self.z_dim,
                    c_dim=self.c_dim, img_resolution=self.img_resolution,
                    img_channels=self.img_channels)

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in self.summary().items() if k != "module")


class TeacherAdapter(_Adapter):
    """Base class: `forward(x, sigma, c=None)` -> D(x; sigma), float32, same shape as x.

    Subclasses implement `_denoise(x, sigma, c)` with x float32 NCHW, sigma float32 [N,1,1,1]
    and c float32 [N, label_dim] or None when the teacher is unconditional.
    """

    def __init__(self, module, img_resolution, img_channels, label_dim,
                 sigma_min=0.002, sigma_max=80.0, sigma_data=0.5):
        super().__init__(module)
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.label_dim = int(label_dim)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)
        if not (0 < self.sigma_min < self.sigma_max and math.isfinite(self.sigma_max)):
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {self.sigma_min}, "
                             f"{self.sigma_max}")

    def _denoise(self, x, sigma, c):
        raise NotImplementedError

    # Whether _denoise takes augment_labels= (EDM's augmentation conditioning).
    takes_augment_labels = False

    def forward(self, x, sigma, c=None, augment_labels=None):
        if x.ndim != 4 or x.shape[1] != self.img_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}; the teacher expects "
                             f"[N, {self.img_channels}, H, W]")
        n = x.shape[0]
        x = x.to(torch.float32)
        sigma = normalize_sigma(sigma, n, x.device)
        c = normalize_labels(c, n, self.label_dim, x.device, what="teacher")
        if augment_labels is None:
            out = self._denoise(x, sigma, c if self.label_dim > 0 else None)
        elif not self.takes_augment_labels:
            raise TypeError(f"{type(self).__name__} takes no augment labels")
        else:
            out = self._denoise(x, sigma, c if self.label_dim > 0 else None,
                                augment_labels=augment_labels.to(torch.float32))
        return out.to(torch.float32)

    def score(self, x, sigma, c=None):
        """Score of the noised data density: (D(x; sigma) - x) / sigma^2."""
        s = normalize_sigma(sigma, x.shape[0], x.device)
        return (self(x, s, c) - x.to(torch.float32)) / s.square()

    def round_sigma(self, sigma):
        """Noise levels the network supports (identity unless the module quantises them)."""
        fn = getattr(self.module, "round_sigma", None)
        return fn(sigma) if callable(fn) else torch.as_tensor(sigma)

    def summary(self):
        return dict(family=self.family, module=type(self.module).__name__,
                    img_resolution=self.img_resolution, img_channels=self.img_channels,
                    label_dim=self.label_dim, sigma_min=self.sigma_min,
                    sigma_max=self.sigma_max, sigma_data=self.sigma_data)

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in self.summary().items() if k != "module")
