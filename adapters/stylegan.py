"""StyleGAN2-ADA and StyleGAN3 generators (the `G` / `G_ema` modules of their network pickles).

Both upstream Generators expose `z_dim, c_dim, w_dim, img_resolution, img_channels`, a
`mapping` and a `synthesis` submodule, and `forward(z, c, truncation_psi=1,
truncation_cutoff=None, **synthesis_kwargs)`. Synthesis kwargs reach the layers: StyleGAN2-ADA
layers use `noise_mode` ('random' | 'const' | 'none') and `force_fp32`; StyleGAN3 layers accept
`noise_mode` and ignore it (they have no noise inputs).
"""

import inspect

from torch import nn

from .base import GeneratorAdapter

__all__ = ["StyleGANGeneratorAdapter", "is_stylegan_generator"]

_REQUIRED = ("z_dim", "c_dim", "img_resolution", "img_channels", "mapping", "synthesis")


def is_stylegan_generator(obj):
    """True for modules shaped like a StyleGAN2-ADA / StyleGAN3 Generator."""
    return isinstance(obj, nn.Module) and all(hasattr(obj, a) for a in _REQUIRED)


def _accepted_kwargs(fn, names):
    """The subset of `names` that `fn` accepts (all of them when it takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set(names)
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return set(names)
    return {p.name for p in params if p.name in names}


class StyleGANGeneratorAdapter(GeneratorAdapter):
    """Wraps a StyleGAN2-ADA / StyleGAN3 Generator; calls `G(z, c, truncation_psi, noise_mode)`.

    Args:
        module: the Generator (kept untouched as `.module`).
        truncation_psi: 1 (no truncation) during refinement, as the method requires.
        noise_mode: 'random' during refinement, so the refined G keeps using its noise inputs
            the way it was trained; 'const' gives deterministic images for grids.
        freeze_mapping: when True, `trainable_parameters()` returns only synthesis parameters.
        force_fp32: None leaves upstream's mixed precision (fp16 in the top blocks on CUDA);
            True asks the synthesis network to run in float32.
        **G_kwargs: any further keyword passed to every forward call.

    Keywords the module's forward does not accept are dropped (checked once by signature).
    In train mode StyleGAN2-ADA's mapping network updates its `w_avg` buffer on every call,
    exactly as during upstream training; StyleGAN3 only does so when asked (`update_emas`).
    """

    family = "stylegan"

    def __init__(self, module, truncation_psi=1.0, noise_mode="random", freeze_mapping=False,
                 force_fp32=None, **G_kwargs):
        if not is_stylegan_generator(module):
            missing = [a for a in _REQUIRED if not hasattr(module, a)]
            raise TypeError(f"{type(module).__name__} is not a StyleGAN Generator "
                            f"(missing {', '.join(missing)})")
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        super().__init__(module, module.z_dim, module.c_dim, module.img_resolution,
                         module.img_channels)
        self.truncation_psi = float(truncation_psi)
        self.noise_mode = noise_mode
        self.freeze_mapping = bool(freeze_mapping)
        kwargs = dict(truncation_psi=self.truncation_psi, noise_mode=noise_mode)
        if force_fp32 is not None:
            kwargs["force_fp32"] = bool(force_fp32)
        kwargs.update(G_kwargs)
        accepted = _accepted_kwargs(module.forward, kwargs)
        self.call_kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        self.dropped_kwargs = sorted(set(kwargs) - accepted)

    def _generate(self, z, c):
        return self.module(z, c, **self.call_kwargs)

    def trainable_parameters(self):
        if self.freeze_mapping:
            return list(self.module.synthesis.parameters())
        return list(self.module.parameters())

    def summary(self):
        s = super().summary()
        s.update(truncation_psi=self.truncation_psi, noise_mode=self.noise_mode,
                 freeze_mapping=self.freeze_mapping)
        return s
