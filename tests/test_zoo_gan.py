"""The digits GAN trainer's pieces against hand computations, and the shipped GAN pickles."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import gan_refine
from gan_refine.zoo import train_gan as T

MODELS = Path(gan_refine.__file__).parent / "zoo" / "models"


def test_nonsaturating_losses_match_softplus_formulas():
    logits = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0], dtype=torch.float64)
    real = torch.tensor([2.0, -1.0, 0.3, 0.0, -5.0], dtype=torch.float64)
    sig = lambda v: 1 / (1 + math.exp(-v))
    want_g = [-math.log(sig(v)) for v in logits.tolist()]
    want_d = [-math.log(1 - sig(f)) - math.log(sig(r)) for f, r in zip(logits.tolist(), real.tolist())]
    np.testing.assert_allclose(T.g_loss(logits[:, None]).numpy(), want_g, rtol=1e-12)
    np.testing.assert_allclose(T.d_loss(real[:, None], logits[:, None]).numpy(), want_d, rtol=1e-12)


class _QuadD(torch.nn.Module):
    """D(x) = sum a * x^2 + b * x: dD/dx = 2 a x + b, so the R1 penalty has a closed form."""

    def __init__(self, shape):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.a = torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64))

    def forward(self, x, c):
        return (self.a * x.square() + self.b * x).sum(dim=[1, 2, 3])[:, None]


def test_r1_penalty_closed_form_and_its_parameter_gradient():
    D = _QuadD([1, 3, 3])
    x = torch.randn([4, 1, 3, 3], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    penalty, logits = T.r1_penalty(D, x, None)
    a, b = D.a.detach(), D.b.detach()
    want = (2 * a * x + b).square().sum(dim=[1, 2, 3])
    torch.testing.assert_close(penalty, want, rtol=1e-12, atol=1e-12)
    # The penalty must be differentiable w.r.t. D's weights (create_graph): d/da sum_i g_i^2
    # with g = 2 a x + b is sum_i 2 g_i * 2 x_i.
    penalty.mean().backward()
    want_grad = (2 * (2 * a * x + b) * 2 * x).mean(dim=0)
    torch.testing.assert_close(D.a.grad, want_grad, rtol=1e-12, atol=1e-12)


def test_r1_penalty_on_a_tiny_stylegan_discriminator_matches_float64_autograd():
    cfg = T.TrainConfig(d_channels=4, mbstd_group=2, cond=True)
    _, D = T.build_networks(cfg)
    D = D.double()
    for m in D.modules():  # FIR filters stay float32, as the resampling ops require
        if getattr(m, "resample_filter", None) is not None:
            m.resample_filter = m.resample_filter.float()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn([2, 1, 16, 16], generator=gen, dtype=torch.float64)
    c = torch.nn.functional.one_hot(torch.tensor([3, 7]), 10).double()
    penalty, _ = T.r1_penalty(D, x, c)
    # Independent: per-sample gradients taken one image at a time would change the minibatch-std
    # feature, so differentiate the batch sum directly with a fresh leaf.
    leaf = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(D(leaf, c).sum(), leaf)
    want = (grad ** 2).flatten(1).sum(dim=1)
    torch.testing.assert_close(penalty.detach(), want, rtol=1e-10, atol=1e-12)
    # The gradient itself against a central difference along a random direction (D's epilogue
    # computes in float32, hence the moderate step and tolerance).
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    eps = 1e-3
    with torch.no_grad():
        fd = (D(x + eps * v, c).sum() - D(x - eps * v, c).sum()).item() / (2 * eps)
    analytic = (grad * v).sum().item()
    assert abs(fd - analytic) < 1e-3 * (abs(analytic) + grad.norm().item())


def test_translate_matches_a_loop_and_fills_with_background():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn([3, 2, 5, 6], generator=gen)
    shift = torch.tensor([[1, -2], [0, 0], [-2, 2]])
    out = T.translate(x, shift, 2)
    want = torch.full_like(x, -1.0)
    for n in range(3):
        dy, dx = shift[n].tolist()
        for i in range(5):
            for j in range(6):
                if 0 <= i - dy < 5 and 0 <= j - dx < 6:
                    want[n, :, i, j] = x[n, :, i - dy, j - dx]
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert T.translate(x, shift, 0) is x


def test_ema_beta_gives_the_requested_half_life():
    batch = 32
    # Far into training the cap applies: after ema_kimg * 1000 images the old weight halves.
    beta = T.ema_beta(cur_nimg=10 ** 7, batch=batch, ema_kimg=10, ema_rampup=0.05)
    assert abs(beta ** (10_000 / batch) - 0.5) < 1e-12
    # Early on, the half-life is 5 % of the images seen: 6,400 images -> 320.
    beta = T.ema_beta(cur_nimg=6400, batch=batch, ema_kimg=10, ema_rampup=0.05)
    assert abs(beta ** (320 / batch) - 0.5) < 1e-12
    assert T.ema_beta(cur_nimg=6400, batch=batch, ema_kimg=10, ema_rampup=None) == 0.5 ** (batch / 10_000)


def test_update_ema_formula():
    net = torch.nn.Linear(3, 2).double()
    ema = torch.nn.Linear(3, 2).double()
    net.register_buffer("w_avg", torch.tensor([1.0, 2.0], dtype=torch.float64))
    ema.register_buffer("w_avg", torch.zeros(2, dtype=torch.float64))
    before = [p.detach().clone() for p in ema.parameters()]
    T.update_ema(ema, net, 0.9)
    for p_ema, p_old, p in zip(ema.parameters(), before, net.parameters()):
        torch.testing.assert_close(p_ema, 0.9 * p_old + 0.1 * p.detach(), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(ema.w_avg, net.w_avg, rtol=0, atol=0)


def test_tiny_training_run_writes_a_loadable_stylegan_pickle(tmp_path):
    torch.manual_seed(0)
    det = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 6))
    det.img_channels, det.input_range = 1, "symmetric"
    cfg = T.TrainConfig(cond=True, z_dim=8, g_channels=4, d_channels=4, batch=4, mbstd_group=2,
                        eval_every=2, eval_num=40, kimg=0.012, minutes=5)
    out = tmp_path / "tiny.pkl"
    info = T.train(cfg, out=str(out), detector=det, log=None)
    assert info["steps"] == 3 and [p["step"] for p in info["curve"]] == [2, 3]
    assert info["best"]["fid_train"] == min(p["fid_train"] for p in info["curve"])
    data = gan_refine.load_network_pkl(str(out))
    assert list(data)[:5] == ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe"]
    assert data["gan_refine"]["step"] == info["best"]["step"]
    assert data["G_ema"].c_dim == 10 and data["D"].c_dim == 10
    # Same seed, same run: the FID curve repeats exactly (and the caller's RNG is left alone).
    state = torch.random.get_rng_state()
    again = T.train(cfg, out=None, detector=det, log=None)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [p["fid_train"] for p in again["curve"]] == [p["fid_train"] for p in info["curve"]]


@pytest.mark.parametrize("name,c_dim", [("digits-gan.pkl", 0), ("digits-gan-cond.pkl", 10)])
def test_shipped_gan_pickles(name, c_dim):
    data = gan_refine.load_network_pkl(str(MODELS / name))
    assert gan_refine.pickles.pickle_layout(data) == "stylegan"
    assert list(data)[:5] == ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe"]
    assert type(data["training_set_kwargs"]) is dict and data["augment_pipe"] is None
    assert data["training_set_kwargs"]["use_labels"] == (c_dim > 0)
    G = data["G_ema"]
    assert (G.z_dim, G.c_dim, G.img_resolution, G.img_channels) == (G.z_dim, c_dim, 16, 1)
    assert data["D"].c_dim == c_dim and data["G"].c_dim == c_dim
    gen = torch.Generator().manual_seed(0)
    z = torch.randn([64, G.z_dim], generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(64) % 10, 10).float()[:, :c_dim]
    with torch.no_grad():
        img = G(z, c, noise_mode="random")
        logits = data["D"](img, c)
    assert img.shape == (64, 1, 16, 16) and torch.isfinite(img).all() and torch.isfinite(logits).all()
    # Trained digits: mostly background (-1) with bright strokes, inside about [-1, 1].
    assert img.min() > -1.5 and img.max() < 1.5
    assert (img.abs() <= 1.1).float().mean() > 0.98
    assert -1.0 < img.mean().item() < 0.0
