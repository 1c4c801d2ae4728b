"""Adapters against closed forms: a linear generator, a Gaussian-data denoiser, stand-ins with
the upstream attribute sets, and (when available) the fixture networks in gan_refine.nets."""

import importlib.metadata
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gan_refine  # noqa: F401  (installs the dnnlib/torch_utils aliases the fixtures need)
from gan_refine import adapters
from gan_refine.adapters import (EDMTeacherAdapter, GenericGeneratorAdapter, GenericTeacherAdapter,
                                 IncompatibleModelsError, StyleGANGeneratorAdapter, as_generator,
                                 as_teacher, check_compatible)

# ---------------------------------------------------------------------------------------------
# Toy networks whose outputs are known in closed form.


class LinearGen(nn.Module):
    """img = reshape(W [z; c] + b): gradients w.r.t. W are an outer product."""

    def __init__(self, z_dim, c_dim, channels, res, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.shape = (channels, res, res)
        self.W = nn.Parameter(torch.randn([channels * res * res, z_dim + c_dim], generator=g) * 0.1)
        self.b = nn.Parameter(torch.randn([channels * res * res], generator=g) * 0.1)

    def forward(self, z, c):
        return (torch.cat([z, c], dim=1) @ self.W.T + self.b).reshape(-1, *self.shape)


class ZOnlyGen(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2 * 4 * 4)

    def forward(self, z):
        return self.lin(z).reshape(-1, 2, 4, 4)


def gaussian_denoiser(mu, s):
    """Exact D for data ~ N(mu_c, s^2 I): D(x; sigma) = mu_c + s^2 / (s^2 + sigma^2) (x - mu_c)."""

    def D(x, sigma, c):
        m = mu[0] if c is None else torch.einsum("nk,kchw->nchw", c, mu)
        return m + s ** 2 / (s ** 2 + sigma ** 2) * (x - m)
    return D


# Stand-ins with upstream attribute names (the real fixtures live in gan_refine.nets).

class _Mapping(nn.Module):
    def __init__(self, z_dim, c_dim, w_dim):
        super().__init__()
        self.fc = nn.Linear(z_dim + c_dim, w_dim)

    def forward(self, z, c, truncation_psi=1):
        return self.fc(torch.cat([z, c], 1)) * truncation_psi


class _Synthesis(nn.Module):
    def __init__(self, w_dim, channels, res):
        super().__init__()
        self.shape = (channels, res, res)
        self.fc = nn.Linear(w_dim, channels * res * res)
        self.noise_strength = nn.Parameter(torch.tensor(0.5))

    def forward(self, w, noise_mode="random"):
        assert noise_mode in ("random", "const", "none")
        img = self.fc(w).reshape(-1, *self.shape)
        if noise_mode == "random":
            img = img + self.noise_strength * torch.randn_like(img)
        return img


class StyleGAN2Like(nn.Module):
    def __init__(self, z_dim=6, c_dim=0, w_dim=5, channels=3, res=4):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = res, channels
        self.mapping = _Mapping(z_dim, c_dim, w_dim)
        self.synthesis = _Synthesis(w_dim, channels, res)
        self.seen_kwargs = None

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        self.seen_kwargs = dict(synthesis_kwargs, truncation_psi=truncation_psi)
        return self.synthesis(self.mapping(z, c, truncation_psi), **synthesis_kwargs)


class StyleGANNoKwargs(StyleGAN2Like):
    """A generator whose forward takes no noise_mode at all (must not be passed one)."""

    def forward(self, z, c, truncation_psi=1):
        return self.synthesis(self.mapping(z, c, truncation_psi), noise_mode="const")


class EDMPrecond(nn.Module):
    """Same attributes and call as EDM's EDMPrecond; D is the Gaussian-data denoiser."""

    def __init__(self, res=4, channels=2, label_dim=0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.img_resolution, self.img_channels, self.label_dim = res, channels, label_dim
        self.sigma_min, self.sigma_max, self.sigma_data = 0, float("inf"), 0.5
        self.mu = nn.Parameter(torch.randn([max(label_dim, 1), channels, res, res], generator=g))
        self.s = 0.7
        self.calls = []

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None, force_fp32=False):
        self.calls.append(dict(force_fp32=force_fp32, sigma_shape=tuple(sigma.shape)))
        sigma = sigma.reshape(-1, 1, 1, 1)
        return gaussian_denoiser(self.mu, self.s)(x, sigma, class_labels)


class VPPrecond(EDMPrecond):
    def __init__(self, **kw):
        super().__init__(**kw)
        del self.sigma_data  # upstream VPPrecond has none
        self.sigma_min, self.sigma_max = 0.0064, 152.0


# ---------------------------------------------------------------------------------------------
# Generic generator


def _f64_linear(gen, z, c):
    x = np.concatenate([z.double().numpy(), c.double().numpy()], axis=1)
    out = x @ gen.W.detach().double().numpy().T + gen.b.detach().double().numpy()
    return out.reshape(z.shape[0], *gen.shape)


def test_generic_generator_matches_closed_form_and_infers_shape():
    net = LinearGen(z_dim=5, c_dim=3, channels=2, res=4)
    state = torch.get_rng_state()
    G = GenericGeneratorAdapter(net, z_dim=5, c_dim=3)
    assert torch.equal(state, torch.get_rng_state()), "dry forward must not move the global RNG"
    assert (G.img_resolution, G.img_channels, G.family) == (4, 2, "generic")
    assert G.module is net and net.training
    z = torch.randn([7, 5], generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    onehot = torch.eye(3)[labels]
    ref = _f64_linear(net, z, onehot)
    out = G(z, labels)  # integer labels become one-hot rows
    assert out.dtype == torch.float32 and out.shape == (7, 2, 4, 4)
    np.testing.assert_allclose(out.detach().double().numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(G(z, onehot).detach().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_generic_generator_gradient_is_outer_product():
    net = LinearGen(z_dim=4, c_dim=2, channels=1, res=2)
    G = as_generator(net, z_dim=4, c_dim=2)
    z = torch.randn([3, 4], generator=torch.Generator().manual_seed(2))
    c = torch.eye(2)[[0, 1, 1]]
    g = torch.randn([3, 1, 2, 2], generator=torch.Generator().manual_seed(3))
    (G(z, c) * g).sum().backward()
    # d/dW sum_n g_n . (W x_n + b) = sum_n g_n x_n^T
    x = np.concatenate([z.double().numpy(), c.double().numpy()], 1)
    ref = g.reshape(3, -1).double().numpy().T @ x
    np.testing.assert_allclose(net.W.grad.double().numpy(), ref, rtol=1e-5, atol=1e-6)
    assert {id(p) for p in G.trainable_parameters()} == {id(net.W), id(net.b)}


def test_generic_generator_z_only_and_errors():
    net = ZOnlyGen()
    G = GenericGeneratorAdapter(net, z_dim=3)
    assert not G.pass_c and (G.img_channels, G.img_resolution) == (2, 4)
    z = torch.randn([2, 3])
    ref = (z.double() @ net.lin.weight.double().T + net.lin.bias.double()).reshape(2, 2, 4, 4)
    torch.testing.assert_close(G(z).double(), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="z has shape"):
        G(torch.randn([2, 4]))
    with pytest.raises(ValueError, match="unconditional"):
        G(z, torch.ones([2, 3]))
    with pytest.raises(ValueError, match="pass z_dim="):
        GenericGeneratorAdapter(nn.Linear(2, 2))


def test_sample_latents_distribution_and_reproducibility():
    G = GenericGeneratorAdapter(LinearGen(3, 4, 1, 2), z_dim=3, c_dim=4)
    z1, c1 = G.sample_latents(6, generator=torch.Generator().manual_seed(5))
    z2, c2 = G.sample_latents(6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(z1, z2) and torch.equal(c1, c2)
    torch.testing.assert_close(z1, torch.randn([6, 3], generator=torch.Generator().manual_seed(5)))
    n = 20000
    _, c = G.sample_latents(n, generator=torch.Generator().manual_seed(6))
    assert torch.equal(c.sum(1), torch.ones(n)) and set(c.unique().tolist()) == {0.0, 1.0}
    counts = c.sum(0).numpy()
    tol = 5 * math.sqrt(n * 0.25 * 0.75)  # 5 binomial standard deviations
    assert np.all(np.abs(counts - n / 4) < tol)
    p = np.array([0.7, 0.1, 0.2, 0.0])
    _, c = G.sample_latents(n, generator=torch.Generator().manual_seed(7), label_probs=p)
    counts = c.sum(0).numpy()
    assert counts[3] == 0
    assert np.all(np.abs(counts - n * p) < 5 * np.sqrt(n * p * (1 - p)) + 1)
    with pytest.raises(ValueError, match="label_probs"):
        G.sample_latents(2, label_probs=[1, 2])
    imgs = G.sample(5, generator=torch.Generator().manual_seed(8))
    assert imgs.shape == (5, 1, 2, 2)


# ---------------------------------------------------------------------------------------------
# Generic teacher


def test_generic_teacher_gaussian_denoiser_and_score():
    g = torch.Generator().manual_seed(0)
    mu, s = torch.randn([3, 2, 4, 4], generator=g), 0.8
    T = as_teacher(gaussian_denoiser(mu, s), img_resolution=4, img_channels=2, label_dim=3)
    assert (T.sigma_min, T.sigma_max, T.sigma_data, T.family) == (0.002, 80.0, 0.5, "generic")
    x = torch.randn([4, 2, 4, 4], generator=g)
    labels = torch.tensor([2, 0, 1, 2])
    sig = torch.tensor([0.1, 1.0, 3.0, 20.0])
    x64, mu64, sig64 = x.double(), mu[labels].double(), sig.double().reshape(-1, 1, 1, 1)
    ref_D = mu64 + s ** 2 / (s ** 2 + sig64 ** 2) * (x64 - mu64)
    # Score of the noised density N(mu, (s^2 + sigma^2) I).
    ref_score = -(x64 - mu64) / (s ** 2 + sig64 ** 2)
    for sigma in (sig, sig.reshape(-1, 1, 1, 1)):
        torch.testing.assert_close(T(x, sigma, labels).double(), ref_D, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(T.score(x, sigma, labels).double(), ref_score, rtol=1e-4,
                                   atol=1e-6)
    D_scalar = T(x, 2.0, labels)
    torch.testing.assert_close(D_scalar.double(), mu64 + s ** 2 / (s ** 2 + 4.0) * (x64 - mu64),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="sigma has shape"):
        T(x, torch.ones(3), labels)
    with pytest.raises(ValueError, match="class-conditional"):
        T(x, sig)
    with pytest.raises(ValueError, match="img_resolution="):
        as_teacher(gaussian_denoiser(mu, s))


# ---------------------------------------------------------------------------------------------
# EDM and StyleGAN adapters on stand-ins


def test_edm_adapter_on_standin():
    net = EDMPrecond(label_dim=3)
    T = as_teacher({"ema": net, "loss_fn": None, "augment_pipe": None, "dataset_kwargs": {}})
    assert isinstance(T, EDMTeacherAdapter) and T.module is net
    # EDMPrecond reports (0, inf): EDM's sampler range is used instead.
    assert (T.sigma_min, T.sigma_max, T.sigma_data, T.label_dim) == (0.002, 80.0, 0.5, 3)
    x = torch.randn([3, 2, 4, 4])
    c = torch.eye(3)[[1, 2, 0]]
    ref = net.mu[[1, 2, 0]].double() + 0.49 / (0.49 + 0.25) * (x.double() - net.mu[[1, 2, 0]].double())
    torch.testing.assert_close(T(x, 0.5, c).double(), ref, rtol=1e-5, atol=1e-6)
    assert net.calls[-1] == dict(force_fp32=False, sigma_shape=(3, 1, 1, 1))
    T32 = EDMTeacherAdapter(net, force_fp32=True)
    T32(x, 0.5, c)
    assert net.calls[-1]["force_fp32"] is True
    vp = VPPrecond(label_dim=0)
    Tv = as_teacher(vp)
    assert (Tv.sigma_min, Tv.sigma_max, Tv.sigma_data) == (0.0064, 152.0, 0.5)
    assert Tv.summary()["precond"] == "VPPrecond"


def test_stylegan_adapter_kwargs_and_closed_form():
    net = StyleGAN2Like(c_dim=2)
    data = {"G": StyleGAN2Like(c_dim=2), "G_ema": net, "D": None, "augment_pipe": None}
    G = as_generator(data)
    assert isinstance(G, StyleGANGeneratorAdapter) and G.module is net
    assert as_generator(data, which="G").module is data["G"]
    z, c = torch.randn([4, 6]), torch.eye(2)[[0, 1, 1, 0]]
    G(z, c)
    assert net.seen_kwargs == dict(noise_mode="random", truncation_psi=1.0)
    Gc = StyleGANGeneratorAdapter(net, noise_mode="const")
    w = torch.cat([z, c], 1).double() @ net.mapping.fc.weight.double().T + net.mapping.fc.bias.double()
    ref = (w @ net.synthesis.fc.weight.double().T + net.synthesis.fc.bias.double()).reshape(4, 3, 4, 4)
    torch.testing.assert_close(Gc(z, c).double(), ref, rtol=1e-5, atol=1e-6)
    # 'random' adds per-call noise, 'const' does not.
    assert not torch.equal(G(z, c), G(z, c)) and torch.equal(Gc(z, c), Gc(z, c))
    frozen = StyleGANGeneratorAdapter(net, freeze_mapping=True)
    assert {id(p) for p in frozen.trainable_parameters()} == {id(p) for p in net.synthesis.parameters()}
    assert len(G.trainable_parameters()) == len(list(net.parameters()))


def test_stylegan_adapter_drops_unaccepted_kwargs():
    net = StyleGANNoKwargs()
    G = as_generator(net)
    assert G.call_kwargs == {"truncation_psi": 1.0} and G.dropped_kwargs == ["noise_mode"]
    assert G(torch.randn([2, 6])).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="noise_mode"):
        StyleGANGeneratorAdapter(net, noise_mode="bogus")


# ---------------------------------------------------------------------------------------------
# Registry dispatch and errors


def test_dispatch_errors_are_one_line_and_actionable():
    edm_pkl = {"ema": EDMPrecond(), "loss_fn": None}
    gan_pkl = {"G_ema": StyleGAN2Like(), "G": StyleGAN2Like()}
    cases = [
        (lambda: as_generator(edm_pkl), "EDM diffusion pickle"),
        (lambda: as_teacher(gan_pkl), "GAN pickle"),
        (lambda: as_generator({"foo": 1}), "has no 'G_ema'"),
        (lambda: as_generator(42), "cannot use a builtins.int"),
        (lambda: as_generator(nn.Conv2d(1, 1, 1)), "pass z_dim="),
        (lambda: as_generator(EDMPrecond()), "diffusion denoiser"),
        (lambda: as_teacher(StyleGAN2Like()), "GAN generator"),
        (lambda: as_teacher(3.5), "callable denoiser"),
        (lambda: as_generator(StyleGAN2Like(), family="nope"), "unknown generator family"),
    ]
    for fn, expected in cases:
        with pytest.raises((ValueError, TypeError)) as info:
            fn()
        assert expected in str(info.value) and "\n" not in str(info.value)
    G = as_generator(StyleGAN2Like())
    assert as_generator(G) is G
    with pytest.raises(TypeError, match="already an adapter"):
        as_generator(G, noise_mode="const")


def test_check_compatible_reports_each_mismatch():
    G10 = as_generator(StyleGAN2Like(c_dim=10, channels=2, res=4))
    G0 = as_generator(StyleGAN2Like(c_dim=0, channels=2, res=4))
    T10 = as_teacher(EDMPrecond(res=4, channels=2, label_dim=10))
    T0 = as_teacher(EDMPrecond(res=4, channels=2, label_dim=0))
    assert check_compatible(G10, T10) == (G10, T10)
    check_compatible(G0, T0)
    cases = [
        (G10, T0, "class-conditional with 10 labels but the teacher is unconditional: pick a "
                  "teacher with 10 labels"),
        (G0, T10, "unconditional but the teacher is class-conditional with 10 labels"),
        (G10, as_teacher(EDMPrecond(res=4, channels=2, label_dim=5)), "the teacher has 5"),
        (G0, as_teacher(EDMPrecond(res=8, channels=2)), "makes 4x4 images but the teacher "
                                                        "denoises 8x8"),
        (G0, as_teacher(EDMPrecond(res=4, channels=3)), "2-channel images but the teacher expects 3"),
    ]
    for g, t, expected in cases:
        with pytest.raises(IncompatibleModelsError) as info:
            check_compatible(g, t)
        assert isinstance(info.value, ValueError)
        assert expected in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(IncompatibleModelsError, match="8x8.*channels.*labels"):
        check_compatible(G10, as_teacher(EDMPrecond(res=8, channels=3)))


class _FakeEntryPoint:
    def __init__(self, name, target):
        self.name, self.value, self._target = name, f"fake:{name}", target

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


class _Blob:
    """A foreign generator type no built-in family recognises."""

    def __init__(self):
        self.net = LinearGen(2, 0, 1, 2)


def test_entry_point_plugin_adds_a_family(monkeypatch):
    def register():
        adapters.register_generator(
            "blob", lambda obj: isinstance(obj, _Blob),
            lambda obj, **kw: GenericGeneratorAdapter(obj.net, z_dim=2, **kw), priority=5)

    eps = [_FakeEntryPoint("blob", register), _FakeEntryPoint("broken", ImportError("nope"))]

    def fake_entry_points(**kw):
        assert kw.get("group", adapters.ENTRY_POINT_GROUP) == adapters.ENTRY_POINT_GROUP
        return eps

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = adapters.discover_entry_points(force=True)
        assert loaded == ["blob"]
        assert any("'broken'" in str(w.message) for w in caught)
        assert [f.name for f in adapters.generator_families()][:2] == ["stylegan", "blob"]
        blob = _Blob()
        G = as_generator(blob)
        z = torch.randn([3, 2])
        ref = (z.double() @ blob.net.W.double().T + blob.net.b.double()).reshape(3, 1, 2, 2)
        torch.testing.assert_close(G(z).double(), ref, rtol=1e-5, atol=1e-6)
    finally:
        adapters.unregister("blob")
    with pytest.raises(TypeError, match="cannot use"):
        as_generator(_Blob())


def test_explicit_registration_priority_and_family_override():
    class Special(StyleGAN2Like):
        pass

    class MarkedAdapter(StyleGANGeneratorAdapter):
        family = "special"

    adapters.register_generator("special", lambda o: isinstance(o, Special), MarkedAdapter,
                                priority=500)
    try:
        assert as_generator(Special()).family == "special"
        assert as_generator(StyleGAN2Like()).family == "stylegan"
        assert as_generator(Special(), family="stylegan").family == "stylegan"
    finally:
        adapters.unregister("special")
    assert as_generator(Special()).family == "stylegan"


# ---------------------------------------------------------------------------------------------
# Fixture networks from gan_refine.nets (skipped until they exist)


def _fixture(name):
    nets = pytest.importorskip("gan_refine.nets")
    fn = getattr(nets, name, None)
    if fn is None:
        pytest.skip(f"gan_refine.nets.{name} not available yet")
    return fn


def test_stylegan2_fixture_through_adapter():
    data = _fixture("stylegan2_pkl_dict")(res=8, c_dim=3, with_augment=False)
    G = as_generator(data)
    assert isinstance(G, StyleGANGeneratorAdapter) and G.module is data["G_ema"]
    assert as_generator(data, which="G").module is data["G"]
    assert G.call_kwargs == {"truncation_psi": 1.0, "noise_mode": "random"}
    z = torch.randn([2, G.z_dim], generator=torch.Generator().manual_seed(0))
    c = torch.eye(3)[[0, 2]]
    Gc = as_generator(data, noise_mode="const")
    with torch.no_grad():
        direct = data["G_ema"](z, c, truncation_psi=1, noise_mode="const")
        out = Gc(z, torch.tensor([0, 2]))
        assert out.shape == (2, G.img_channels, 8, 8) and out.dtype == torch.float32
        torch.testing.assert_close(out, direct.float())
        assert not torch.equal(G(z, c), G(z, c))  # 'random' noise differs per call


def test_stylegan3_fixture_through_adapter():
    data = _fixture("stylegan3_pkl_dict")(res=8, with_augment=False)
    G = as_generator(data)
    assert isinstance(G, StyleGANGeneratorAdapter) and G.c_dim == 0
    z = torch.randn([2, G.z_dim], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # StyleGAN3 has no noise inputs: the adapter's noise_mode must not change the output.
        torch.testing.assert_close(G(z), data["G_ema"](z, torch.zeros([2, 0])).float())


@pytest.mark.parametrize("kind", ["EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond"])
def test_edm_fixture_metadata(kind):
    net = _fixture("edm_pkl_dict")(kind=kind, res=8, label_dim=2)["ema"]
    T = as_teacher(net)
    assert isinstance(T, EDMTeacherAdapter) and T.summary()["precond"] == kind
    assert (T.img_resolution, T.img_channels, T.label_dim) == (8, 3, 2)
    assert T.sigma_data == getattr(net, "sigma_data", 0.5) == 0.5
    if kind == "EDMPrecond":  # reports (0, inf): EDM's sampler range stands in
        assert (T.sigma_min, T.sigma_max) == (0.002, 80.0)
    else:
        assert not hasattr(net, "sigma_data")
        assert (T.sigma_min, T.sigma_max) == pytest.approx((net.sigma_min, net.sigma_max))


def test_edm_fixture_forward():
    data = _fixture("edm_pkl_dict")(kind="EDMPrecond", res=8, label_dim=3)
    T, net = as_teacher(data), data["ema"]
    x = torch.randn([2, 3, 8, 8], generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.3, 5.0])
    with torch.no_grad():
        direct = net(x, sigma, torch.eye(3)[[0, 2]])
        torch.testing.assert_close(T(x, sigma.reshape(-1, 1, 1, 1), torch.tensor([0, 2])), direct)


def test_paths_go_through_the_pickle_loader(tmp_path):
    pickles = pytest.importorskip("gan_refine.pickles")
    data = _fixture("edm_pkl_dict")(kind="EDMPrecond", res=8, label_dim=0)
    path = tmp_path / "edm.pkl"
    pickles.save_network_pkl(data, str(path))
    T = as_teacher(str(path))
    assert isinstance(T, EDMTeacherAdapter) and T.img_resolution == 8
    with pytest.raises(ValueError, match="EDM diffusion pickle"):
        as_generator(path)
