"""EDM denoisers (the `ema` module of NVlabs/edm network pickles).

EDM's preconditioning wrappers (EDMPrecond, VPPrecond, VEPrecond, iDDPMPrecond) all take
`net(x, sigma, class_labels=None, force_fp32=False)` with x in data units and return the
denoised estimate D(x; sigma); they carry `img_resolution, img_channels, label_dim,
sigma_min, sigma_max` and a `round_sigma` method.
"""

import inspect
import math

from torch import nn

from .base import TeacherAdapter

__all__ = ["EDMTeacherAdapter", "is_edm_denoiser", "EDM_PRECOND_CLASSES"]

EDM_PRECOND_CLASSES = ("EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond")
_REQUIRED = ("img_resolution", "img_channels", "label_dim", "sigma_min", "sigma_max")

# EDM's own sampler defaults, used when a net reports the unbounded range (0, inf).
EDM_SIGMA_MIN = 0.002
EDM_SIGMA_MAX = 80.0
EDM_SIGMA_DATA = 0.5


def is_edm_denoiser(obj):
    """True for EDM preconditioned nets, by class name or by their attribute set."""
    if not isinstance(obj, nn.Module):
        return False
    if type(obj).__name__ in EDM_PRECOND_CLASSES:
        return True
    return all(hasattr(obj, a) for a in _REQUIRED) and callable(getattr(obj, "round_sigma", None))


class EDMTeacherAdapter(TeacherAdapter):
    """Wraps an EDM preconditioned denoiser.

    sigma_data: EDMPrecond stores it (0.5 for all released models). VPPrecond, VEPrecond and
    iDDPMPrecond have no such attribute upstream; 0.5 is used for them, the value EDM's paper
    assumes for images scaled to [-1, 1]. It only sets the fake-score loss weighting
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, not the network output.

    sigma_min / sigma_max come from the net. EDMPrecond reports 0 and inf (no limit); those are
    replaced by EDM's sampler defaults 0.002 / 80. VP/VE/iDDPM report their trained ranges.

    force_fp32: None leaves the net's own precision (fp16 on CUDA when built with use_fp16);
    True forces float32.
    """

    family = "edm"

    def __init__(self, module, sigma_min=None, sigma_max=None, sigma_data=None, force_fp32=None):
        if not is_edm_denoiser(module):
            missing = [a for a in _REQUIRED if not hasattr(module, a)]
            raise TypeError(f"{type(module).__name__} is not an EDM denoiser "
                            f"(missing {', '.join(missing) or 'round_sigma'})")
        net_min = float(module.sigma_min)
        net_max = float(module.sigma_max)
        if sigma_min is None:
            sigma_min = net_min if net_min > 0 else EDM_SIGMA_MIN
        if sigma_max is None:
            sigma_max = net_max if math.isfinite(net_max) and net_max > 0 else EDM_SIGMA_MAX
        if sigma_data is None:
            sigma_data = float(getattr(module, "sigma_data", EDM_SIGMA_DATA))
        super().__init__(module, module.img_resolution, module.img_channels, module.label_dim,
                         sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data)
        self.call_kwargs = {}
        if force_fp32 is not None:
            try:
                params = inspect.signature(module.forward).parameters
                accepts = "force_fp32" in params or any(p.kind == p.VAR_KEYWORD
                                                         for p in params.values())
            except (TypeError, ValueError):
                accepts = True
            if accepts:
                self.call_kwargs["force_fp32"] = bool(force_fp32)

    takes_augment_labels = True

    def _denoise(self, x, sigma, c, **kw):
        return self.module(x, sigma, c, **self.call_kwargs, **kw)

    def summary(self):
        s = super().summary()
        s["precond"] = type(self.module).__name__
        return s
