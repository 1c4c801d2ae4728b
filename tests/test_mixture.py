"""Several teachers: the generator follows the weighted mixture of their denoisers.

Analytic check: two Gaussian teachers N(mu_a, s^2 I) and N(mu_b, s^2 I) of one variance. Their
denoisers are affine in x with the same slope, so w_a D_a + w_b D_b is exactly the denoiser of
N(w_a mu_a + w_b mu_b, s^2 I): the mixture target is known in closed form.
"""

import math
import os

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from gan_refine import nets
from gan_refine.adapters import (GenericGeneratorAdapter, GenericTeacherAdapter, IncompatibleModelsError,
                                 MixtureTeacher)
from gan_refine.cli import main
from gan_refine.pickles import save_network_pkl
from gan_refine.refiner import Refiner

S = 0.1
MU_A, MU_B, W_A, W_B = (0.6, 0.4), (-0.6, -0.2), 0.25, 0.75


class Gaussian(nn.Module):
    """Exact D(x; sigma) for x0 ~ N(mu, s^2 I); mean and log-std trainable (a fake score)."""

    def __init__(self, mu, s=S):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(mu, dtype=torch.float32))
        self.log_s = nn.Parameter(torch.tensor(math.log(s)))

    def forward(self, x, sigma, c=None):
        n = x.shape[0]
        s2 = (2 * self.log_s).exp()
        k = s2 / (s2 + sigma.reshape(n, 1, 1, 1) ** 2)
        return self.mu.reshape(1, -1, 1, 1) + k * (x - self.mu.reshape(1, -1, 1, 1))


def teacher(mu):
    return GenericTeacherAdapter(Gaussian(mu).requires_grad_(False), img_resolution=1, img_channels=2)


def closed_form(x, sigma):
    mu = torch.tensor([W_A * a + W_B * b for a, b in zip(MU_A, MU_B)], dtype=torch.float64).reshape(1, 2, 1, 1)
    k = S ** 2 / (S ** 2 + sigma.double().reshape(-1, 1, 1, 1) ** 2)
    return mu + k * (x.double() - mu)


def test_mixture_denoiser_is_the_closed_form_target():
    mix = MixtureTeacher([teacher(MU_A), teacher(MU_B)], weights=[1, 3])  # normalised to 0.25, 0.75
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, 1, 1, generator=g) * 2
    sigma = torch.exp(torch.randn(64, generator=g) * 1.5)
    assert (mix(x, sigma).double() - closed_form(x, sigma)).abs().max() < 1e-6
    single = MixtureTeacher([teacher(MU_A), teacher(MU_B)], weights=[1, 0])
    assert torch.allclose(single(x, sigma), teacher(MU_A)(x, sigma))


def test_refinement_follows_the_mixture():
    class Affine(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(0.3))
            self.shift = nn.Parameter(torch.tensor([1.5, -1.5]))

        def forward(self, z, c=None):
            return (self.scale * z + self.shift).reshape(-1, 2, 1, 1)
    gen = GenericGeneratorAdapter(Affine(), z_dim=2, img_resolution=1, img_channels=2)
    mix = MixtureTeacher([teacher(MU_A), teacher(MU_B)], weights=[W_A, W_B])
    fake = GenericTeacherAdapter(Gaussian(MU_A), img_resolution=1, img_channels=2)
    # A quick fake score (5 updates at a high rate) keeps up with the moving generator.
    r = Refiner(gen, mix, fake_score=fake, batch=128, lr_gen=1e-2, lr_fake=5e-2, fake_updates=5,
                ema_kimg=1.0, seed=0, device="cpu")
    r.run(steps=600)
    target = torch.tensor([W_A * a + W_B * b for a, b in zip(MU_A, MU_B)])
    G = r.G_ema.module
    assert (G.shift.detach() - target).abs().max() < 0.05, G.shift
    assert abs(abs(float(G.scale)) - S) < 0.03, G.scale
    # The control: the first teacher alone pulls elsewhere.
    assert (torch.tensor(MU_A) - target).abs().max() > 0.5


def test_teachers_must_agree_before_any_work(tmp_path):
    save_network_pkl(nets.stylegan2_pkl_dict(res=8, seed=0), tmp_path / "gen.pkl")
    save_network_pkl(nets.edm_pkl_dict(res=8, seed=3), tmp_path / "t8.pkl")
    save_network_pkl(nets.edm_pkl_dict(res=16, seed=3), tmp_path / "t16.pkl")
    base = ["--gen", tmp_path / "gen.pkl", "--kimg", 0.004, "--batch", 2, "--device", "cpu",
            "--outdir", tmp_path / "runs"]
    for extra, pattern in ((["--teacher", tmp_path / "t8.pkl", "--teacher", tmp_path / "t16.pkl"],
                            "teacher 2 has img_resolution 16 but teacher 1 has 8"),
                           (["--teacher", tmp_path / "t8.pkl", "--teacher", tmp_path / "t8.pkl",
                             "--teacher-weights", "1,2,3"], "3 weights for 2 --teacher")):
        r = CliRunner().invoke(main, [str(a) for a in base + extra], catch_exceptions=False)
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert r.exit_code == 1 and len(lines) == 1 and pattern in lines[0], r.output
        assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")
    with pytest.raises(IncompatibleModelsError):
        MixtureTeacher([teacher(MU_A), GenericTeacherAdapter(Gaussian(MU_A), img_resolution=2, img_channels=2)])
