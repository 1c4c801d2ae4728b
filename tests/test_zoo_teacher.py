"""The digits zoo: EDM's Heun sampler, the EDM loss, the shipped detector and teacher pickles.

References are closed forms: for data N(mu, s^2) per pixel the exact denoiser is
D(x; sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), the probability-flow ODE keeps
(x - mu) / sqrt(s^2 + sigma^2) constant, so x(0) = mu + (x_T - mu) s / sqrt(s^2 + sigma_T^2),
and with s = sigma_data the EDM-weighted loss of that denoiser is exactly 1 per pixel.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import gan_refine
from gan_refine.metrics import get_detector, quantize
from gan_refine.pickles import stream_globals
from gan_refine.zoo import edm_sampler, train_teacher
from gan_refine.zoo.digits_data import load_digits_split

MODELS = Path(gan_refine.__file__).parent / "zoo" / "models"


class GaussianDenoiser(torch.nn.Module):
    """The exact denoiser of N(mu_c, s^2) per pixel (mu_c by class when conditional)."""

    def __init__(self, means, s, label_dim=0, res=4, round_to=None):
        super().__init__()
        self.means = torch.as_tensor(means, dtype=torch.float64)  # [label_dim or 1, C, H, W]
        self.s = s
        self.label_dim = label_dim
        self.img_channels = self.means.shape[1]
        self.img_resolution = res
        self.round_to = round_to
        self.seen_sigmas = []

    def round_sigma(self, sigma):
        sigma = torch.as_tensor(sigma)
        return sigma if self.round_to is None else (sigma / self.round_to).round() * self.round_to

    def mean_for(self, c, n):
        if self.label_dim:
            return torch.einsum("nk,kchw->nchw", c.to(torch.float64), self.means)
        return self.means[:1].expand(n, -1, -1, -1)

    def forward(self, x, sigma, c=None):
        self.seen_sigmas.append(float(sigma.reshape(-1)[0]))
        sig2 = sigma.to(torch.float64).reshape(-1, 1, 1, 1) ** 2
        mu = self.mean_for(c, x.shape[0])
        return ((self.s ** 2 * x.to(torch.float64) + sig2 * mu) / (self.s ** 2 + sig2)).to(torch.float32)


def closed_form(latents, mu, s, sigma_max=80.0):
    x_t = latents.to(torch.float64) * sigma_max
    return mu + (x_t - mu) * s / np.sqrt(s ** 2 + sigma_max ** 2)


def test_karras_sigmas_match_formula():
    n, lo, hi, rho = 18, 0.002, 80.0, 7.0
    got = edm_sampler.karras_sigmas(n, lo, hi, rho).numpy()
    want = [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)]
    assert got.shape == (n + 1,)
    np.testing.assert_allclose(got[:-1], want, rtol=1e-12)
    assert got[0] == pytest.approx(hi) and got[-2] == pytest.approx(lo) and got[-1] == 0


def test_heun_matches_gaussian_ode_solution():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn([1, 1, 4, 4], generator=gen, dtype=torch.float64) * 0.3
    s = 0.5
    net = GaussianDenoiser(mu, s)
    latents = torch.randn([64, 1, 4, 4], generator=gen, dtype=torch.float64)
    want = closed_form(latents, mu, s)
    errors = {}
    for steps in (18, 36, 72):
        net.seen_sigmas.clear()
        got = edm_sampler.heun_sample(net, latents, num_steps=steps).to(torch.float64)
        errors[steps] = (got - want).abs().max().item()
        assert len(net.seen_sigmas) == 2 * steps - 1  # Heun everywhere but the last (Euler) step
    scale = want.abs().max().item()
    # 18 steps land near the exact end point (a few % off for this sharply peaked Gaussian) ...
    assert errors[18] < 0.06 * scale
    # ... and the error shrinks like 1/N^2 (Heun is second order; Euler would only halve it),
    # converging on the closed form.
    assert errors[36] < errors[18] / 3 and errors[72] < errors[36] / 3
    assert errors[72] < 3e-3 * scale


def test_heun_rounds_sigma_and_conditions_on_labels():
    gen = torch.Generator().manual_seed(1)
    means = torch.randn([3, 1, 4, 4], generator=gen, dtype=torch.float64)
    s = 0.4
    net = GaussianDenoiser(means, s, label_dim=3, round_to=1e-3)
    images, labels = edm_sampler.sample_images(net, num=7, seed=5, batch=3, num_steps=72)
    for i, seed in enumerate(range(5, 12)):
        rng = np.random.RandomState(seed)   # the per-seed convention: latent, then label
        z = torch.as_tensor(rng.randn(1, 4, 4))[None]
        label = rng.randint(3)
        assert labels[i].item() == label
        want = closed_form(z, means[label:label + 1], s)
        np.testing.assert_allclose(images[i:i + 1].numpy(), want.numpy(), atol=2e-2)
    seen = np.array(net.seen_sigmas)
    np.testing.assert_allclose(seen, np.round(seen / 1e-3) * 1e-3, atol=1e-6)


def test_edm_loss_of_exact_denoiser_is_one():
    s = train_teacher.DEFAULTS["sigma_data"]
    mu = torch.full([1, 1, 4, 4], 0.2, dtype=torch.float64)
    net = GaussianDenoiser(mu, s)
    gen = torch.Generator().manual_seed(2)
    x0 = (mu + s * torch.randn([4000, 1, 4, 4], generator=gen, dtype=torch.float64)).to(torch.float32)
    loss = train_teacher._edm_loss(net, x0, None, gen, -1.2, 1.2, s)
    assert loss.shape == x0.shape
    assert loss.mean().item() == pytest.approx(1.0, abs=0.03)


def _recorded():
    return json.loads((MODELS / "digits-models.json").read_text())["models"]


def test_shipped_detector_classifies_heldout_split():
    _, _, x_test, y_test = load_digits_split(res=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(MODELS / "digits-detector.pt"))
    with torch.no_grad():
        logits = module(quantize(x_test))
    acc = (logits.argmax(1) == y_test).double().mean().item()
    assert acc == pytest.approx(_recorded()["digits-detector"]["test_accuracy"], abs=0.01)
    assert acc > 0.95

    det = get_detector("digits")
    feats = det(quantize(x_test)).double()
    assert feats.shape == (len(x_test), det.feature_dim)
    # Features are standardised on the training split: held-out ones are close to mean 0, std 1.
    assert feats.mean().abs().item() < 0.3
    assert 0.6 < feats.std(0).mean().item() < 1.5


@pytest.mark.parametrize("name,label_dim", [("digits-edm.pkl", 0), ("digits-edm-cond.pkl", 10)])
def test_shipped_teacher_pickles(name, label_dim):
    path = MODELS / name
    stream = path.read_bytes()
    assert not any(m.startswith("gan_refine") for m, _ in stream_globals(stream))
    data = gan_refine.load_network_pkl(str(path))
    assert list(data)[:4] == ["ema", "loss_fn", "augment_pipe", "dataset_kwargs"]
    net = data["ema"]
    assert type(net).__name__ == "EDMPrecond"
    assert (net.label_dim, net.img_channels, net.img_resolution, net.sigma_data) == (label_dim, 1, 16, 0.5)
    assert not net.training and not any(p.requires_grad for p in net.parameters())

    # A trained denoiser removes most of a small amount of noise from held-out digits.
    _, _, x_test, y_test = load_digits_split(res=16)
    x0 = x_test[:64]
    gen = torch.Generator().manual_seed(3)
    sigma = 0.2
    noisy = x0 + sigma * torch.randn(x0.shape, generator=gen)
    c = torch.nn.functional.one_hot(y_test[:64], 10).float() if label_dim else None
    with torch.no_grad():
        den = net(noisy, torch.full([64], sigma), c)
    assert (den - x0).square().mean() < 0.5 * (noisy - x0).square().mean()
