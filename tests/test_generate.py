"""`gan-refine-generate` on tiny fixture pickles, and EDM's Heun sampler against an
independent float64 integration of an analytic probability-flow ODE."""

import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from gan_refine import nets
from gan_refine.adapters import as_teacher
from gan_refine.generate import main
from gan_refine.images import GUTTER, grid_scale
from gan_refine.pickles import load_network_pkl, save_network_pkl
from gan_refine.zoo.edm_sampler import heun_sample


@pytest.fixture(scope="module")
def pkls(tmp_path_factory):
    d = tmp_path_factory.mktemp("pkls")
    made = dict(gen=nets.stylegan2_pkl_dict(res=8, seed=0),
                gen_cond=nets.stylegan2_pkl_dict(res=8, c_dim=3, seed=0),
                teacher=nets.edm_pkl_dict(res=8, seed=3),
                teacher_cond=nets.edm_pkl_dict(res=8, label_dim=3, seed=3))
    paths = {}
    for name, data in made.items():
        paths[name] = str(d / f"{name}.pkl")
        save_network_pkl(data, paths[name])
    return paths


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args] + ["--device", "cpu"], catch_exceptions=False)


def read_png(path):
    with Image.open(path) as im:
        return np.asarray(im)


def quantize_like_upstream(img):
    # gen_images.py: (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()


def upstream_image(G, seed, c_dim=0, class_idx=None, **kw):
    """One image as StyleGAN's gen_images.py makes it for `seed`."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim))
    label = torch.zeros([1, c_dim])
    if c_dim:
        label[:, class_idx] = 1
    with torch.no_grad():
        return quantize_like_upstream(G(z, label, **kw))[0]


def test_pngs_names_sizes_and_no_temp_files(pkls, tmp_path):
    out = tmp_path / "out"
    r = invoke(["--network", pkls["gen"], "--seeds", "0-3,7,12", "--outdir", out, "--batch", 4])
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(out)) == [f"seed{s:04d}.png" for s in (0, 1, 2, 3, 7, 12)]
    with Image.open(out / "seed0007.png") as im:
        assert im.size == (8, 8) and im.mode == "RGB"
    r = invoke(["--network", pkls["gen"], "--seeds", "12345", "--outdir", out])
    assert os.path.exists(out / "seed12345.png")  # %04d widens, as upstream's names do


@pytest.mark.parametrize("batch", [1, 3])
def test_same_image_as_upstream_convention(pkls, tmp_path, batch):
    seeds = [0, 5, 123, 4000]
    r = invoke(["--network", pkls["gen"], "--seeds", "0,5,123,4000", "--outdir", tmp_path,
                "--batch", batch])
    assert r.exit_code == 0, r.output
    G = load_network_pkl(pkls["gen"])["G_ema"]
    for s in seeds:
        got = read_png(tmp_path / f"seed{s:04d}.png").astype(int)
        want = upstream_image(G, s, truncation_psi=1, noise_mode="const").astype(int)
        # Batched convolutions may round differently from single ones: one level at most.
        assert np.abs(got - want).max() <= (0 if batch == 1 else 1)
    a, b = read_png(tmp_path / "seed0000.png"), read_png(tmp_path / "seed0005.png")
    assert np.abs(a.astype(int) - b).mean() > 1   # different seeds, different images


def test_key_noise_mode_and_trunc(pkls, tmp_path):
    data = load_network_pkl(pkls["gen"])
    r = invoke(["--network", pkls["gen"], "--seeds", "3", "--outdir", tmp_path / "g", "--key", "G",
                "--trunc", 0.5, "--batch", 1])
    assert r.exit_code == 0, r.output
    want = upstream_image(data["G"], 3, truncation_psi=0.5, noise_mode="const")
    np.testing.assert_array_equal(read_png(tmp_path / "g" / "seed0003.png"), want)

    # Random noise: reproducible from run to run, but not the stored constants.
    for name in ("r1", "r2"):
        invoke(["--network", pkls["gen"], "--seeds", "0-1", "--outdir", tmp_path / name,
                "--noise-mode", "random"])
    r1, r2 = read_png(tmp_path / "r1" / "seed0000.png"), read_png(tmp_path / "r2" / "seed0000.png")
    np.testing.assert_array_equal(r1, r2)
    const = upstream_image(data["G_ema"], 0, noise_mode="const")
    assert np.abs(r1.astype(int) - const).max() > 0


def test_trunc_zero_gives_the_average_image(pkls, tmp_path):
    r = invoke(["--network", pkls["gen"], "--seeds", "0-5", "--outdir", tmp_path, "--trunc", 0])
    assert r.exit_code == 0, r.output
    G = load_network_pkl(pkls["gen"])["G_ema"]
    ws = G.mapping.w_avg.reshape(1, 1, -1).repeat(1, G.num_ws, 1)
    with torch.no_grad():
        avg = quantize_like_upstream(G.synthesis(ws, noise_mode="const"))[0].astype(int)
    for s in range(6):
        assert np.abs(read_png(tmp_path / f"seed{s:04d}.png").astype(int) - avg).max() <= 1


def test_conditional_class(pkls, tmp_path):
    r = invoke(["--network", pkls["gen_cond"], "--seeds", "0-1", "--outdir", tmp_path, "--class", 2,
                "--batch", 1])
    assert r.exit_code == 0, r.output
    G = load_network_pkl(pkls["gen_cond"])["G_ema"]
    want = upstream_image(G, 1, c_dim=3, class_idx=2, noise_mode="const")
    np.testing.assert_array_equal(read_png(tmp_path / "seed0001.png"), want)
    other = upstream_image(G, 1, c_dim=3, class_idx=0, noise_mode="const")
    assert np.abs(other.astype(int) - want).max() > 0


@pytest.mark.parametrize("which, args, pattern", [
    ("gen_cond", [], "class-conditional (3 classes): give --class 0..2"),
    ("gen_cond", ["--class", 3], "--class 3 is out of range"),
    ("gen_cond", ["--class", -1], "--class -1 is out of range"),
    ("gen", ["--class", 0], "unconditional: drop --class"),
    ("teacher_cond", [], "class-conditional (3 classes)"),
    ("teacher", ["--trunc", 0.7], "--trunc apply to StyleGAN pickles"),
    ("teacher", ["--key", "G"], "--key apply to StyleGAN pickles"),
    ("gen", ["--steps", 4], "--steps apply to EDM diffusion pickles"),
    ("gen", ["--sigma-min", 0.5, "--sigma-max", 0.1], "must be below --sigma-max"),
    (None, [], "no such file"),
    ("gen", ["--seeds", "5-2"], "runs backwards"),
    ("gen", ["--seeds", "a"], "is not a seed"),
])
def test_bad_input_one_line(pkls, tmp_path, which, args, pattern):
    network = pkls[which] if which else tmp_path / "missing.pkl"
    r = invoke(["--network", network, "--outdir", tmp_path / "o", "--seeds", "0"] + args)
    assert r.exit_code in (1, 2)
    assert pattern in r.output
    error = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(error) == 1


def test_not_a_network_pickle(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    r = invoke(["--network", bad, "--outdir", tmp_path / "o"])
    assert r.exit_code == 1 and "Error: --network:" in r.output and "not a pickle" in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_refused_without_gpu(pkls, tmp_path):
    r = CliRunner().invoke(main, ["--network", pkls["gen"], "--outdir", str(tmp_path), "--device", "cuda:0"])
    assert r.exit_code == 1 and "CUDA is not available" in r.output


def test_grid(pkls, tmp_path):
    r = invoke(["--network", pkls["gen"], "--seeds", "0-4", "--outdir", tmp_path / "a", "--grid"])
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path / "a")) == ["grid.png"] + [f"seed{s:04d}.png" for s in range(5)]
    r = invoke(["--network", pkls["gen"], "--seeds", "0-4", "--outdir", tmp_path / "b", "--grid-only",
                "--grid-cols", 2])
    assert r.exit_code == 0, r.output
    assert os.listdir(tmp_path / "b") == ["grid.png"]
    grid = read_png(tmp_path / "b" / "grid.png")
    k = grid_scale(8, 8)
    cell = 8 * k
    assert grid.shape == (3 * cell + 2 * GUTTER, 2 * cell + GUTTER, 3)
    # Cell 3 (row 1, column 1) is seed 3, every pixel enlarged k x k.
    y = x = cell + GUTTER
    seed3 = read_png(tmp_path / "a" / "seed0003.png")
    np.testing.assert_array_equal(grid[y:y + cell:k, x:x + cell:k], seed3)


def test_progress_bar_on_stderr(pkls, tmp_path):
    r = CliRunner().invoke(main, ["--network", pkls["gen"], "--seeds", "0-2", "--outdir", str(tmp_path),
                                  "--device", "cpu", "--progress"])
    assert r.exit_code == 0
    assert "3/3" in r.stderr and "seed" not in r.stdout


def test_edm_pickle_uses_heun_sampler(pkls, tmp_path):
    r = invoke(["--network", pkls["teacher"], "--seeds", "0-2", "--outdir", tmp_path, "--steps", 5,
                "--batch", 2])
    assert r.exit_code == 0, r.output
    T = as_teacher(load_network_pkl(pkls["teacher"])).eval()
    latents = torch.from_numpy(np.stack([np.random.RandomState(s).randn(3, 8, 8) for s in range(3)]))
    with torch.no_grad():
        want = quantize_like_upstream(heun_sample(T, latents, None, num_steps=5))
    for s in range(3):
        got = read_png(tmp_path / f"seed{s:04d}.png").astype(int)
        assert np.abs(got - want[s]).max() <= 1

    r = invoke(["--network", pkls["teacher_cond"], "--seeds", "0", "--outdir", tmp_path / "c",
                "--steps", 3, "--class", 1])
    assert r.exit_code == 0, r.output
    Tc = as_teacher(load_network_pkl(pkls["teacher_cond"])).eval()
    onehot = torch.nn.functional.one_hot(torch.tensor([1]), 3).float()
    with torch.no_grad():
        want = quantize_like_upstream(heun_sample(Tc, latents[:1], onehot, num_steps=3))[0]
    assert np.abs(read_png(tmp_path / "c" / "seed0000.png").astype(int) - want).max() <= 1


# ----------------------------------------------------------------------------
# The sampler against an analytic problem: data ~ N(mu, s^2 I), whose denoiser is closed-form,
# D(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), and whose probability-flow ODE is solved
# exactly by x(sigma) - mu proportional to sqrt(s^2 + sigma^2).

MU, S = 0.3, 0.5


class GaussianDenoiser:
    img_channels, img_resolution, label_dim = 1, 4, 0

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, class_labels=None):
        self.calls += 1
        assert x.dtype == torch.float32 and class_labels is None
        s2 = sigma.to(torch.float64).reshape(-1, 1, 1, 1) ** 2
        return (MU + S ** 2 / (S ** 2 + s2) * (x.to(torch.float64) - MU)).to(torch.float32)


def heun_reference(latents, steps, sigma_min=0.002, sigma_max=80.0, rho=7.0, net_float32=False):
    """Float64 numpy Heun integration of dx/dsigma = (x - D(x; sigma)) / sigma, written out
    from Karras et al. (2022), Algorithm 1 with no stochastic churn. `net_float32` rounds the
    denoiser's input and output to float32, as a network called by EDM's sampler sees them."""
    def denoise(x, sigma):
        if net_float32:
            x = x.astype(np.float32).astype(np.float64)
            sigma = float(np.float32(sigma))
        out = MU + S ** 2 / (S ** 2 + sigma ** 2) * (x - MU)
        return out.astype(np.float32).astype(np.float64) if net_float32 else out
    inv = 1.0 / rho
    ts = [(sigma_max ** inv + i / (steps - 1) * (sigma_min ** inv - sigma_max ** inv)) ** rho
          for i in range(steps)] + [0.0]
    x = latents.astype(np.float64) * ts[0]
    for t, t_next in zip(ts[:-1], ts[1:]):
        slope = (x - denoise(x, t)) / t
        euler = x + (t_next - t) * slope
        if t_next == 0:
            x = euler
        else:
            slope_next = (euler - denoise(euler, t_next)) / t_next
            x = x + (t_next - t) * 0.5 * (slope + slope_next)
    return x


@pytest.mark.parametrize("steps", [2, 5, 18])
def test_heun_matches_float64_reference(steps):
    latents = np.random.RandomState(0).randn(6, 1, 4, 4)
    net = GaussianDenoiser()
    got = heun_sample(net, torch.from_numpy(latents), num_steps=steps).to(torch.float64).numpy()
    assert net.calls == 2 * steps - 1
    # Same arithmetic: the state in float64, the network's inputs and outputs in float32.
    want = heun_reference(latents, steps, net_float32=True)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # Against exact float64 throughout, float32 network I/O costs a few parts in 1e4 at most.
    np.testing.assert_allclose(got, heun_reference(latents, steps), rtol=5e-4, atol=5e-4)


def test_heun_18_steps_solves_the_gaussian_ode():
    latents = np.random.RandomState(1).randn(64, 1, 4, 4)
    got = heun_sample(GaussianDenoiser(), torch.from_numpy(latents), num_steps=18)
    got = got.to(torch.float64).numpy()
    exact = MU + latents * 80.0 * S / math.sqrt(S ** 2 + 80.0 ** 2)
    # 18 steps land within a few per cent of the exact end point (the discretisation error of
    # this sharply peaked Gaussian; it shrinks as 1/N^2, see test_zoo_teacher) ...
    assert np.abs(got - exact).max() < 0.06 * np.abs(exact).max()
    # ... and the samples have the data's mean and spread.
    assert abs(got.mean() - MU) < 0.05 and abs(got.std() - S) < 0.05
