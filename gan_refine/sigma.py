"""Noise-level laws: how the refiner draws sigma for each training sample.

Each law is a small object with `sample(n, generator=None, device=None) -> sigma [n]` (float32)
that draws ONLY from the torch.Generator it is handed, so runs are reproducible and resumable.
"""

import math

import torch

__all__ = ["LogNormalSigma", "KarrasUniformSigma", "make_sigma_law", "SIGMA_LAWS", "bin_labels",
           "bin_index"]


def _uniform(n, generator, device):
    rng_device = generator.device if generator is not None else device
    return torch.rand([n], generator=generator, device=rng_device, dtype=torch.float64)


def _normal(n, generator, device):
    rng_device = generator.device if generator is not None else device
    return torch.randn([n], generator=generator, device=rng_device, dtype=torch.float64)


class LogNormalSigma:
    """EDM's training law: ln(sigma) ~ N(P_mean, P_std^2)."""

    name = "lognormal"

    def __init__(self, P_mean=-1.2, P_std=1.2):
        if not P_std > 0:
            raise ValueError(f"P_std must be positive, got {P_std}")
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)

    def sample(self, n, generator=None, device=None):
        ln_sigma = self.P_mean + self.P_std * _normal(n, generator, device)
        return ln_sigma.exp().to(device=device or ln_sigma.device, dtype=torch.float32)

    def __repr__(self):
        return f"LogNormalSigma(P_mean={self.P_mean}, P_std={self.P_std})"


class KarrasUniformSigma:
    """t ~ U[0, t_max], sigma = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho.

    This is uniform over the continuous Karras et al. (2022) schedule; t_max < 1 leaves out the
    noisiest part (SiD used t_max = 0.8 with sigma_min 0.002, sigma_max 80, rho 7).
    """

    name = "karras-uniform"

    def __init__(self, sigma_min=0.002, sigma_max=80.0, rho=7.0, t_max=1.0):
        if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        if not (rho > 0 and 0 < t_max <= 1):
            raise ValueError(f"need rho > 0 and 0 < t_max <= 1, got rho={rho}, t_max={t_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.rho, self.t_max = float(rho), float(t_max)

    def sigma_at(self, t):
        lo = self.sigma_min ** (1 / self.rho)
        hi = self.sigma_max ** (1 / self.rho)
        return (lo + t * (hi - lo)) ** self.rho

    def sample(self, n, generator=None, device=None):
        t = _uniform(n, generator, device) * self.t_max
        sigma = self.sigma_at(t)
        return sigma.to(device=device or sigma.device, dtype=torch.float32)

    def __repr__(self):
        return (f"KarrasUniformSigma(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, "
                f"rho={self.rho}, t_max={self.t_max})")


SIGMA_LAWS = ("lognormal", "karras-uniform")


def make_sigma_law(name, *, P_mean=-1.2, P_std=1.2, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                   t_max=1.0):
    """Build the law called `name` (one of SIGMA_LAWS) from the refiner's settings."""
    if name == "lognormal":
        return LogNormalSigma(P_mean, P_std)
    if name == "karras-uniform":
        return KarrasUniformSigma(sigma_min, sigma_max, rho, t_max)
    raise ValueError(f"unknown sigma law {name!r}; choose one of {', '.join(SIGMA_LAWS)}")


def bin_labels(edges):
    """Readable names for the noise-level bins cut at `edges` (ascending)."""
    edges = list(edges)
    if not edges:
        return ["all"]
    names = [f"sigma<{edges[0]:g}"]
    names += [f"sigma{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:])]
    names.append(f"sigma>={edges[-1]:g}")
    return names


def bin_index(sigma, edges):
    """Index of each sigma's bin (0 .. len(edges)); a bin holds [edge_i, edge_{i+1})."""
    edges_t = torch.as_tensor(list(edges), dtype=sigma.dtype, device=sigma.device)
    return torch.bucketize(sigma, edges_t, right=True)
