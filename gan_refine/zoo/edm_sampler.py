"""EDM's deterministic sampler: Heun's 2nd-order method on the probability-flow ODE.

Karras et al. 2022 (Algorithm 1 with S_churn = 0): noise levels
sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then 0;
the ODE dx/dsigma = (x - D(x; sigma)) / sigma is stepped with Heun's method, except the last
step to sigma = 0, which is plain Euler (the correction would divide by zero). N = 18 gives
35 network evaluations. `net` is any denoiser `net(x, sigma, class_labels) -> D(x; sigma)`;
if it has `round_sigma`, the noise levels are snapped to what it supports, as EDM does.
"""

import numpy as np
import torch

__all__ = ["karras_sigmas", "heun_sample", "sample_images"]


def karras_sigmas(num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, net=None, dtype=torch.float64):
    """The N noise levels of the schedule followed by a final 0 (N + 1 values, decreasing)."""
    if num_steps < 1:
        raise ValueError("num_steps must be at least 1")
    if net is not None:
        # A net trained on a bounded range of noise levels is only asked about those.
        sigma_min = max(sigma_min, float(getattr(net, "sigma_min", 0) or 0))
        sigma_max = min(sigma_max, float(getattr(net, "sigma_max", float("inf"))))
    i = torch.arange(num_steps, dtype=dtype)
    frac = i / max(num_steps - 1, 1)
    t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    if net is not None and hasattr(net, "round_sigma"):
        t = torch.as_tensor(net.round_sigma(t)).to(dtype)
    return torch.cat([t, torch.zeros_like(t[:1])])


def heun_sample(net, latents, class_labels=None, num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                dtype=torch.float64):
    """Integrate from x = latents * sigma_0 down to sigma = 0; returns float32 images.

    `latents` are standard normal [N, C, H, W]. The state is kept in `dtype` (float64 by
    default, like EDM's sampler); each network call gets float32, as the networks expect.
    """
    sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho, net=net, dtype=dtype).to(latents.device)

    def denoise(x, sigma):
        s = torch.full([x.shape[0]], float(sigma), device=x.device, dtype=torch.float32)
        return net(x.to(torch.float32), s, class_labels).to(dtype)

    x = latents.to(dtype) * sigmas[0]
    for i in range(num_steps):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        d_cur = (x - denoise(x, s_cur)) / s_cur
        x_next = x + (s_next - s_cur) * d_cur
        if i < num_steps - 1:
            d_next = (x_next - denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.to(torch.float32)


def sample_images(net, num, seed=0, batch=250, label_dim=None, num_steps=18, device=None, **kw):
    """`num` images from seeds seed .. seed+num-1.

    Seed s gives the latent `np.random.RandomState(s).randn(C, H, W)` and, for a conditional
    net, a label `randint(label_dim)` from the same stream (the per-seed convention of
    gan_refine.metrics), so a sample does not depend on the batch it ran in.
    Returns (float32 images [num, C, H, W], int64 labels or None).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    label_dim = getattr(net, "label_dim", 0) if label_dim is None else label_dim
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    images, labels = [], []
    for start in range(seed, seed + num, batch):
        seeds = range(start, min(start + batch, seed + num))
        z, c = [], []
        for s in seeds:
            rng = np.random.RandomState(s)
            z.append(rng.randn(*shape))
            if label_dim:
                c.append(rng.randint(label_dim))
        latents = torch.as_tensor(np.stack(z), device=device)
        onehot = None
        if label_dim:
            lab = torch.as_tensor(c, dtype=torch.int64)
            labels.append(lab)
            onehot = torch.nn.functional.one_hot(lab, label_dim).to(torch.float32).to(device)
        with torch.no_grad():
            images.append(heun_sample(net, latents, onehot, num_steps=num_steps, **kw).cpu())
    return torch.cat(images), (torch.cat(labels) if labels else None)
