"""Losses and noise-level laws against hand computations in float64."""

import math

import numpy as np
import pytest
import torch

from gan_refine import losses
from gan_refine.sigma import KarrasUniformSigma, LogNormalSigma, bin_index, bin_labels, make_sigma_law


class LinearDenoiser(torch.nn.Module):
    """D(x; sigma) = a * x / (1 + sigma^2) + b: simple enough to differentiate by hand."""

    def __init__(self, a, b):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(float(a), dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(float(b), dtype=torch.float64))

    def forward(self, x, sigma, c=None):
        s = sigma.reshape(-1, 1, 1, 1)
        return self.a * x / (1 + s ** 2) + self.b


def _batch(seed=0, n=5, shape=(3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    noise = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.randn(n, generator=g, dtype=torch.float64))
    return x0, sigma, noise


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_surrogate_injects_exactly_the_given_gradient(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 5, 5, generator=g, dtype=dtype, requires_grad=True)
    grad = torch.randn(4, 3, 5, 5, generator=g, dtype=dtype)
    losses.gradient_surrogate(x, grad).sum().backward()
    assert torch.equal(x.grad, grad)  # bit-for-bit, not approximately


def test_gradient_surrogate_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="does not match"):
        losses.gradient_surrogate(torch.zeros(2, 3), torch.zeros(2, 4))


def test_ikl_gradient_wrt_generator_output_is_dphi_minus_dteacher():
    x0, sigma, noise = _batch()
    fake, teacher = LinearDenoiser(0.7, 0.1), LinearDenoiser(1.3, -0.2)
    x0 = x0.clone().requires_grad_(True)
    per_sample, figs = losses.ikl_generator_loss(fake, teacher, x0, sigma, noise, None)
    n = x0.shape[0]
    per_sample.mean().backward()  # the refiner's reduction: sum(g * x0) / batch

    # Hand computation: D_phi(x) - D_T(x) = (a_phi - a_T) x / (1 + sigma^2) + (b_phi - b_T).
    s = sigma.reshape(-1, 1, 1, 1)
    x = x0.detach() + s * noise
    expected = (0.7 - 1.3) * x / (1 + s ** 2) + (0.1 - (-0.2))
    torch.testing.assert_close(x0.grad, expected / n, rtol=1e-12, atol=1e-14)
    # No gradient reaches either network: they were evaluated under no_grad.
    assert fake.a.grad is None and teacher.a.grad is None
    torch.testing.assert_close(figs["gap"], expected.abs().flatten(1).mean(1))


def test_ikl_gradient_flows_to_generator_parameters_by_chain_rule():
    x0_base, sigma, noise = _batch(seed=3, n=4, shape=(2, 1, 1))
    W = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    W.requires_grad_(True)
    z = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x0 = (z @ W.T).reshape(4, 2, 1, 1)
    fake, teacher = LinearDenoiser(0.5, 0.0), LinearDenoiser(1.0, 0.3)
    per_sample, _ = losses.ikl_generator_loss(fake, teacher, x0, sigma, noise, None)
    per_sample.sum().backward()
    s = sigma.reshape(-1, 1, 1, 1)
    x = x0.detach() + s * noise
    g = ((0.5 - 1.0) * x / (1 + s ** 2) - 0.3).reshape(4, 2)
    torch.testing.assert_close(W.grad, g.T @ z, rtol=1e-12, atol=1e-14)


def test_ikl_dmd_normalisation_divides_by_mean_abs_residual():
    x0, sigma, noise = _batch(seed=7)
    fake, teacher = LinearDenoiser(0.9, 0.05), LinearDenoiser(1.1, 0.0)
    x0 = x0.clone().requires_grad_(True)
    per_sample, _ = losses.ikl_generator_loss(fake, teacher, x0, sigma, noise, None, normalize="dmd")
    per_sample.sum().backward()
    s = sigma.reshape(-1, 1, 1, 1)
    x = x0.detach() + s * noise
    d_t = 1.1 * x / (1 + s ** 2)
    g = (0.9 - 1.1) * x / (1 + s ** 2) + 0.05
    scale = (x0.detach() - d_t).abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(x0.grad, g / scale, rtol=1e-12, atol=1e-14)


def test_ikl_rejects_unknown_normalisation():
    x0, sigma, noise = _batch()
    net = LinearDenoiser(1, 0)
    with pytest.raises(ValueError, match="normalize"):
        losses.ikl_generator_loss(net, net, x0, sigma, noise, None, normalize="l2")


def test_fake_score_loss_matches_float64_hand_computation_and_its_derivative():
    x0, sigma, noise = _batch(seed=11)
    x0 = x0.clone().requires_grad_(True)
    net = LinearDenoiser(0.8, 0.1)
    sigma_data = 0.5
    per_sample, figs = losses.fake_score_loss(net, x0, sigma, noise, None, sigma_data)
    per_sample.sum().backward()

    x0n, sn, nn_ = (t.detach().numpy() for t in (x0, sigma, noise))
    expected, d_da, d_db = [], 0.0, 0.0
    for i in range(len(sn)):
        lam = (sn[i] ** 2 + sigma_data ** 2) / (sn[i] * sigma_data) ** 2
        x = x0n[i] + sn[i] * nn_[i]
        r = 0.8 * x / (1 + sn[i] ** 2) + 0.1 - x0n[i]
        expected.append(lam * np.sum(r ** 2))
        d_da += lam * np.sum(2 * r * x / (1 + sn[i] ** 2))
        d_db += lam * np.sum(2 * r)
    np.testing.assert_allclose(per_sample.detach().numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(net.a.grad.item(), d_da, rtol=1e-10)
    np.testing.assert_allclose(net.b.grad.item(), d_db, rtol=1e-10)
    assert x0.grad is None  # the generator gets nothing from the fake-score loss
    assert figs["fake_score/mse"].shape == (len(sn),)


def test_edm_weight_formula():
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    expected = [(s * s + 0.25) / (s * s * 0.25) for s in (0.002, 0.5, 80.0)]
    np.testing.assert_allclose(losses.edm_weight(sigma, 0.5).numpy(), expected, rtol=1e-14)


def test_sid_loss_value_and_gradient_match_the_paper_form():
    """Value against the paper's (1 - alpha)|f_T - f_phi|^2 + (f_T - f_phi).(f_phi - x0) form,
    gradient against a hand derivative (networks linear in x, so x = x0 + sigma n gives
    dx/dx0 = I)."""
    x0, sigma, noise = _batch(seed=13, n=3, shape=(2, 2, 2))
    x0 = x0.clone().requires_grad_(True)
    alpha, a_t, a_f = 1.2, 1.1, 0.6
    teacher, fake = LinearDenoiser(a_t, 0.0), LinearDenoiser(a_f, 0.0)
    per_sample, _ = losses.sid_generator_loss(fake, teacher, x0, sigma, noise, None, alpha=alpha)
    per_sample.sum().backward()

    s = sigma.reshape(-1, 1, 1, 1)
    x0d = x0.detach()
    x = x0d + s * noise
    k_t, k_f = a_t / (1 + s ** 2), a_f / (1 + s ** 2)
    f_t, f_f = k_t * x, k_f * x
    w = (x0d - f_t).abs().mean(dim=(1, 2, 3), keepdim=True)
    d = f_t - f_f
    value = (((1 - alpha) * d ** 2 + d * (f_f - x0d)) / w).flatten(1).sum(1)
    torch.testing.assert_close(per_sample.detach(), value, rtol=1e-12, atol=1e-14)
    dd = k_t - k_f  # d(d)/dx0
    grad = (2 * (1 - alpha) * d * dd + dd * (f_f - x0d) + d * (k_f - 1)) / w
    torch.testing.assert_close(x0.grad, grad, rtol=1e-12, atol=1e-14)


def test_lognormal_law_moments_and_reproducibility():
    law = LogNormalSigma(P_mean=-1.2, P_std=1.2)
    s1 = law.sample(200_000, generator=torch.Generator().manual_seed(0))
    s2 = law.sample(200_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2) and s1.dtype == torch.float32
    ln = s1.double().log()
    # Standard errors: 1.2 / sqrt(2e5) ~ 0.0027 for the mean, ~0.0019 for the std.
    assert abs(ln.mean().item() + 1.2) < 0.015
    assert abs(ln.std().item() - 1.2) < 0.01


def test_karras_uniform_law_is_uniform_in_schedule_time():
    law = KarrasUniformSigma(0.002, 80.0, 7.0, t_max=0.8)
    sigma = law.sample(100_000, generator=torch.Generator().manual_seed(1)).double()
    lo, hi = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
    t = (sigma ** (1 / 7) - lo) / (hi - lo)  # invert the schedule by hand
    assert t.min() >= -1e-5 and t.max() <= 0.8 + 1e-5
    counts = torch.histc(t.float(), bins=8, min=0, max=0.8)
    assert (counts / counts.sum() - 1 / 8).abs().max() < 0.01
    assert math.isclose(law.sigma_at(1.0), 80.0, rel_tol=1e-12)
    assert math.isclose(law.sigma_at(0.0), 0.002, rel_tol=1e-12)


def test_make_sigma_law_and_bins():
    assert isinstance(make_sigma_law("lognormal"), LogNormalSigma)
    assert isinstance(make_sigma_law("karras-uniform", t_max=0.5), KarrasUniformSigma)
    with pytest.raises(ValueError, match="unknown sigma law"):
        make_sigma_law("cosine")
    edges = (0.1, 0.5, 2.0)
    assert bin_labels(edges) == ["sigma<0.1", "sigma0.1-0.5", "sigma0.5-2", "sigma>=2"]
    idx = bin_index(torch.tensor([0.05, 0.1, 0.3, 0.5, 1.9, 2.0, 50.0]), edges)
    assert idx.tolist() == [0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("normalize", ["none", "dmd"])
def test_one_fake_score_forward_gives_both_losses_and_both_gradients(normalize):
    """ikl_and_fake_score_loss (one fake-score call) against hand computations: the generator's
    gradient D_phi - D_T (optionally DMD-normalised) and the fake score's parameter gradient of
    lambda(sigma) |D_phi(x) - x0|^2, for D(x) = a x / (1 + sigma^2) + b."""
    x0, sigma, noise = _batch(seed=3)
    fake, teacher = LinearDenoiser(0.7, 0.1), LinearDenoiser(1.3, -0.2)
    calls = []
    fake.register_forward_hook(lambda *a: calls.append(1))
    x0 = x0.clone().requires_grad_(True)
    gen_ps, fake_ps, figs = losses.ikl_and_fake_score_loss(fake, teacher, x0, sigma, noise, None,
                                                           sigma_data=0.5, normalize=normalize)
    assert len(calls) == 1
    (gen_ps.mean() + fake_ps.mean()).backward()
    n = x0.shape[0]
    s = sigma.reshape(-1, 1, 1, 1)
    x = x0.detach() + s * noise
    d_fake, d_teacher = 0.7 * x / (1 + s ** 2) + 0.1, 1.3 * x / (1 + s ** 2) - 0.2
    g = d_fake - d_teacher
    if normalize == "dmd":
        g = g / (x0.detach() - d_teacher).abs().flatten(1).mean(1).reshape(-1, 1, 1, 1)
    # Only the generator's term reaches x0: the fake score's input and target are detached.
    torch.testing.assert_close(x0.grad, g / n, rtol=1e-12, atol=1e-14)
    lam = (s ** 2 + 0.25) / (s * 0.5) ** 2
    resid = d_fake - x0.detach()
    grad_a = (lam * 2 * resid * x / (1 + s ** 2)).flatten(1).sum(1).mean()
    grad_b = (lam * 2 * resid).flatten(1).sum(1).mean()
    torch.testing.assert_close(fake.a.grad, grad_a, rtol=1e-12, atol=0)
    torch.testing.assert_close(fake.b.grad, grad_b, rtol=1e-12, atol=0)
    assert teacher.a.grad is None and teacher.b.grad is None
    torch.testing.assert_close(figs["fake_score/mse"], resid.square().flatten(1).mean(1).detach())
    torch.testing.assert_close(figs["gap"], (d_fake - d_teacher).abs().flatten(1).mean(1).detach())


def test_one_fake_score_forward_equals_the_two_separate_losses():
    """Bit for bit the values of ikl_generator_loss and fake_score_loss on the same inputs."""
    x0, sigma, noise = _batch(seed=4)
    fake, teacher = LinearDenoiser(0.9, 0.3), LinearDenoiser(1.1, 0.0)
    gen_ps, fake_ps, _ = losses.ikl_and_fake_score_loss(fake, teacher, x0, sigma, noise, None, 0.5)
    ref_gen, _ = losses.ikl_generator_loss(fake, teacher, x0, sigma, noise, None)
    ref_fake, _ = losses.fake_score_loss(fake, x0, sigma, noise, None, 0.5)
    assert torch.equal(gen_ps, ref_gen) and torch.equal(fake_ps.detach(), ref_fake.detach())
