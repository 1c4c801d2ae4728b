"""The Refiner on an analytic problem, plus its bookkeeping (EMA, resume, errors).

The analytic problem: data = a 2-D mixture of four Gaussians, treated as [N, 2, 1, 1] images.
Its diffused denoiser is known in closed form (posterior-weighted component means), so the
teacher is exact; the fake score is a copy of it with trainable means, widths and weights.
"""

import copy
import math

import pytest
import torch
from torch import nn

from gan_refine import losses, nets
from gan_refine.adapters import (GenericGeneratorAdapter, GenericTeacherAdapter,
                                 IncompatibleModelsError)
from gan_refine.refiner import NonFiniteError, Refiner, _SharedDropout, refine, resolve_device
from gan_refine.snapshot import load_state, save_state

MEANS = [[0.5, 0.5], [-0.5, 0.5], [0.5, -0.5], [-0.5, -0.5]]
STD = 0.1


class GMMDenoiser(nn.Module):
    """Exact D(x; sigma) = E[x0 | x] for x0 ~ sum_k w_k N(mu_k, s_k^2 I), x = x0 + sigma n."""

    def __init__(self, means=MEANS, std=STD, weights=(0.25, 0.25, 0.25, 0.25)):
        super().__init__()
        self.means = nn.Parameter(torch.tensor(means, dtype=torch.float32))
        self.log_std = nn.Parameter(torch.full([len(means)], math.log(std)))
        self.logits = nn.Parameter(torch.tensor(weights, dtype=torch.float32).log())

    def forward(self, x, sigma, c=None):
        n, d = x.shape[:2]
        xf = x.reshape(n, d).double()
        s2 = sigma.reshape(n, 1).double() ** 2
        mu = self.means.double()
        sk2 = (2 * self.log_std.double()).exp()[None]
        var = sk2 + s2
        sq = ((xf[:, None, :] - mu[None]) ** 2).sum(-1)
        logr = self.logits.double().log_softmax(0)[None] - d / 2 * var.log() - sq / (2 * var)
        post = mu[None] + (sk2 / var)[..., None] * (xf[:, None, :] - mu[None])
        return (logr.softmax(1)[..., None] * post).sum(1).reshape(x.shape).to(x.dtype)


class MLPGenerator(nn.Module):
    def __init__(self, offset=(1.5, -1.5), seed=0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(),
                                     nn.Linear(64, 2))
        self.offset = nn.Parameter(torch.tensor(offset))

    def forward(self, z, c=None):
        return (0.3 * self.net(z) + self.offset).reshape(-1, 2, 1, 1)


def toy_pair(offset=(1.5, -1.5), teacher=None):
    gen = GenericGeneratorAdapter(MLPGenerator(offset), z_dim=2, img_resolution=1, img_channels=2)
    teacher = GenericTeacherAdapter(teacher or GMMDenoiser(), img_resolution=1, img_channels=2)
    return gen, teacher


def true_samples(n, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(MEANS), [n], generator=g)
    return torch.tensor(MEANS, dtype=torch.float64)[idx] + STD * torch.randn(n, 2, generator=g,
                                                                              dtype=torch.float64)


def sliced_wasserstein(a, b, seed=3, n_dirs=128):
    a, b = a.double().reshape(len(a), -1), b.double().reshape(len(b), -1)
    dirs = torch.randn(n_dirs, a.shape[1], generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    pa, pb = (a @ dirs.T).sort(0).values, (b @ dirs.T).sort(0).values
    return ((pa - pb) ** 2).mean().sqrt().item()


TOY = dict(batch=128, lr_gen=1e-2, lr_fake=2e-2, fake_updates=2, ema_kimg=1.0, seed=0)


def distance_to_truth(net, n=2000):
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return sliced_wasserstein(net(z), true_samples(n, seed=1))


def test_gmm_denoiser_is_tweedie_of_the_analytic_density():
    """Check the fixture itself: D(x; sigma) = x + sigma^2 grad log p_sigma(x), float64."""
    net = GMMDenoiser().double()
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.01, 0.1, 0.3, 1.0, 3.0, 20.0], dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    var = STD ** 2 + sigma[:, None] ** 2
    mu = torch.tensor(MEANS, dtype=torch.float64)
    dens = sum(0.25 * torch.exp(-((xr - m) ** 2).sum(1) / (2 * var[:, 0])) / (2 * math.pi * var[:, 0])
               for m in mu)
    (score,) = torch.autograd.grad(dens.log().sum(), xr)
    expected = x + sigma[:, None] ** 2 * score
    got = net(x.reshape(6, 2, 1, 1), sigma).reshape(6, 2)
    # Tolerance covers the float32 storage of log(std) in the fixture.
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_refinement_pulls_generator_to_the_analytic_teacher_and_controls_do_not():
    gen, teacher = toy_pair()
    true_floor = sliced_wasserstein(true_samples(2000, seed=7), true_samples(2000, seed=1))
    r = Refiner(gen, teacher, **TOY)
    d0 = distance_to_truth(r.G_ema)
    r.run(steps=300)
    d1 = distance_to_truth(r.G_ema)
    assert d0 > 1.0
    assert d1 < d0 / 8, (d0, d1)
    assert d1 < 3 * true_floor, (d1, true_floor)

    # Control 1: the generator gradient with its sign flipped.
    def flipped(*args):
        per_sample, figs = losses.ikl_generator_loss(*args)
        return -per_sample, figs
    gen, teacher = toy_pair()
    r = Refiner(gen, teacher, generator_loss=flipped, **TOY)
    r.run(steps=150)
    assert not distance_to_truth(r.G_ema) < 0.9 * d0

    # Control 2: the teacher replaced by the fake score: g == 0, nothing pulls the generator.
    gen, teacher = toy_pair()
    r = Refiner(gen, teacher, **TOY)
    r.teacher = r.fake_score
    r.run(steps=100)
    assert distance_to_truth(r.G_ema) == pytest.approx(d0, rel=1e-6)


@pytest.mark.parametrize("variant", [
    dict(normalize="dmd", lr_gen=3e-3),
    dict(loss="sid", sid_alpha=1.2, sigma_law="karras-uniform", t_max=0.8, lr_gen=3e-3),
])
def test_variants_also_pull_the_generator_to_the_teacher(variant):
    r = Refiner(*toy_pair(), **dict(TOY, **variant))
    d0 = distance_to_truth(r.G_ema)
    r.run(steps=300)
    assert distance_to_truth(r.G_ema) < d0 / 4


def test_fake_score_starts_as_a_copy_of_the_teacher_and_user_objects_stay_untouched():
    gen, teacher = toy_pair()
    before = copy.deepcopy(gen.module.state_dict())
    r = Refiner(gen, teacher, **TOY)
    assert r.fake_score is not r.teacher and r.fake_score.module is not teacher.module
    for (k, a), (_, b) in zip(r.fake_score.state_dict().items(), teacher.state_dict().items()):
        assert torch.equal(a, b), k
    assert all(not p.requires_grad for p in r.teacher.parameters())
    r.run(steps=3)
    for k, v in gen.module.state_dict().items():
        assert torch.equal(v, before[k]), k
    # The teacher never moves; the fake score and generator do.
    assert torch.equal(r.teacher.module.means, torch.tensor(MEANS))
    assert not torch.equal(r.fake_score.module.means, torch.tensor(MEANS))
    assert not torch.equal(r.G.module.offset, gen.module.offset)


def test_generator_starts_from_g_ema_of_a_pickle_dict_and_export_keeps_other_entries():
    g_ema, g_raw = MLPGenerator(seed=1), MLPGenerator(seed=2)
    for m in (g_ema, g_raw):
        m.z_dim, m.img_resolution, m.img_channels = 2, 1, 2
    data = {"G": g_raw, "D": nn.Linear(2, 1), "G_ema": g_ema, "training_set_kwargs": {"x": 1}}
    _, teacher = toy_pair()
    r = Refiner(data, teacher, **TOY)
    for a, b in zip(r.G.module.parameters(), g_ema.parameters()):
        assert torch.equal(a, b)
    r.run(steps=2)
    out = r.export_dict()
    assert set(out) == set(data)
    assert out["D"] is data["D"] and out["training_set_kwargs"] is data["training_set_kwargs"]
    assert isinstance(out["G_ema"], MLPGenerator) and not out["G_ema"].training
    assert all(not p.requires_grad for p in out["G_ema"].parameters())
    for a, b in zip(out["G_ema"].parameters(), r.G_ema.module.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(out["G"].parameters(), r.G.module.parameters()):
        assert torch.equal(a, b)
    meta = r.metadata()
    assert meta["step"] == 2 and meta["options"]["batch"] == TOY["batch"]


def test_export_of_a_plain_module_needs_check_false(tmp_path):
    import pickle

    from gan_refine.pickles import NetworkPickleError
    r = Refiner(*toy_pair(), **TOY)
    r.step()
    with pytest.raises(NetworkPickleError, match="refusing"):
        r.export_pickle(tmp_path / "a.pkl")
    assert not (tmp_path / "a.pkl").exists()
    r.export_pickle(tmp_path / "b.pkl", check=False)
    with open(tmp_path / "b.pkl", "rb") as f:
        data = pickle.load(f)
    assert set(data) == {"G", "G_ema", "gan_refine"}
    for a, b in zip(data["G_ema"].parameters(), r.G_ema.module.parameters()):
        assert torch.equal(a, b)


def test_generator_ema_follows_half_life_with_rampup():
    gen, teacher = toy_pair()
    r = Refiner(gen, teacher, **dict(TOY, ema_kimg=0.5, ema_rampup=0.05))
    ema0 = [p.detach().clone() for p in r.G_ema.parameters()]
    r.step()
    # After one step of batch 128: ema half-life = min(500, 128 * 0.05) images.
    beta = 0.5 ** (128 / min(500, 128 * 0.05))
    for e0, e1, g in zip(ema0, r.G_ema.parameters(), r.G.parameters()):
        torch.testing.assert_close(e1, g + beta * (e0 - g), rtol=0, atol=1e-7)
    r2 = Refiner(*toy_pair(), **dict(TOY, ema_kimg=0.0))
    r2.step()
    for e, g in zip(r2.G_ema.parameters(), r2.G.parameters()):
        assert torch.equal(e, g)


def test_step_statistics():
    r = Refiner(*toy_pair(), **TOY)
    stats = r.step()
    for key in ("loss/generator", "loss/fake_score", "grad_norm/generator",
                "grad_norm/fake_score", "images_per_sec", "gap/mean", "kimg"):
        assert math.isfinite(stats[key]), key
    assert stats["kimg"] == 0.128 and stats["step"] == 1
    assert any(k.startswith("gap/sigma") for k in stats)


def test_gradient_clipping_caps_the_applied_gradient():
    r = Refiner(*toy_pair(), **dict(TOY, grad_clip=1e-3))
    seen = []
    orig = r.opt_G.step

    def spy(*a, **k):
        seen.append(math.sqrt(sum(p.grad.pow(2).sum().item() for p in r._g_params)))
        return orig(*a, **k)
    r.opt_G.step = spy
    stats = r.step()
    assert stats["grad_norm/generator"] > 1e-3  # the logged norm is the one before clipping
    assert seen[0] == pytest.approx(1e-3, rel=1e-4)


class DropoutDenoiser(GMMDenoiser):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.3)

    def forward(self, x, sigma, c=None):
        return self.drop(super().forward(x, sigma, c))


@pytest.mark.parametrize("teacher_mode", ["eval", "train"])
def test_resume_gives_identical_weights(tmp_path, teacher_mode):
    cfg = dict(TOY, teacher_mode=teacher_mode, batch=16)
    r = Refiner(*toy_pair(teacher=DropoutDenoiser()), **cfg)
    r.run(steps=6)

    a = Refiner(*toy_pair(teacher=DropoutDenoiser()), **cfg)
    a.run(steps=3)
    save_state(tmp_path / "state.pt", a.state_dict())
    torch.manual_seed(1234)  # whatever the caller did to the global RNG in between
    b = Refiner(*toy_pair(teacher=DropoutDenoiser()), **cfg)
    b.load_state_dict(load_state(tmp_path / "state.pt"))
    assert b.cur_step == 3 and b.cur_nimg == 48
    b.run(steps=3)
    for name in ("G", "G_ema", "fake_score"):
        for (k, x), (_, y) in zip(getattr(r, name).state_dict().items(),
                                  getattr(b, name).state_dict().items()):
            assert torch.equal(x, y), (name, k)


def test_resume_refuses_different_method_settings(tmp_path):
    a = Refiner(*toy_pair(), **TOY)
    state = a.state_dict()
    b = Refiner(*toy_pair(), **dict(TOY, lr_gen=1e-3))
    with pytest.raises(ValueError, match="lr_gen"):
        b.load_state_dict(state)


def test_shared_dropout_gives_two_copies_the_same_mask():
    net = nn.Sequential(nn.Linear(4, 64), nn.Dropout(0.5)).train()
    twin = copy.deepcopy(net)
    x = torch.randn(8, 4)
    dev = torch.device("cpu")
    a = _SharedDropout(lambda x, s, c: net(x), 7, dev)(x, None, None)
    b = _SharedDropout(lambda x, s, c: twin(x), 7, dev)(x, None, None)
    c = _SharedDropout(lambda x, s, c: twin(x), 8, dev)(x, None, None)
    assert torch.equal(a, b) and not torch.equal(a, c)


class NaNAfter(nn.Module):
    """Makes finite images until `bad` is set."""

    def __init__(self):
        super().__init__()
        self.inner = MLPGenerator()
        self.register_buffer("bad", torch.tensor(False))

    def forward(self, z, c=None):
        out = self.inner(z)
        return torch.where(self.bad, torch.full_like(out, float("nan")), out)


def test_nan_generator_output_stops_before_any_update():
    gen = GenericGeneratorAdapter(NaNAfter(), z_dim=2, img_resolution=1, img_channels=2)
    r = Refiner(gen, toy_pair()[1], **TOY)
    r.step()
    r.G.module.bad.fill_(True)
    before = {k: v.clone() for k, v in r.G.state_dict().items()}
    fake_before = {k: v.clone() for k, v in r.fake_score.state_dict().items()}
    with pytest.raises(NonFiniteError, match="generator output is NaN/inf at step 2"):
        r.step()
    assert r.cur_step == 1
    for k, v in r.G.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in r.fake_score.state_dict().items():
        assert torch.equal(v, fake_before[k]), k


def test_incompatible_models_and_bad_settings_are_refused():
    gen, _ = toy_pair()
    wrong = GenericTeacherAdapter(GMMDenoiser(), img_resolution=4, img_channels=2)
    with pytest.raises(IncompatibleModelsError, match="1x1 images but the teacher denoises 4x4"):
        Refiner(gen, wrong)
    labelled = GenericTeacherAdapter(GMMDenoiser(), img_resolution=1, img_channels=2, label_dim=3)
    with pytest.raises(IncompatibleModelsError, match="labels"):
        Refiner(gen, labelled)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Refiner(*toy_pair(), precision="bf16", device="cpu")
    with pytest.raises(ValueError, match="fake_updates"):
        Refiner(*toy_pair(), fake_updates=0)
    with pytest.raises(ValueError, match="fake_warmup"):
        Refiner(*toy_pair(), fake_warmup=-1)
    plain = GenericTeacherAdapter(lambda x, s, c: x, img_resolution=1, img_channels=2)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Refiner(toy_pair()[0], plain)


def test_device_resolution_never_assumes_a_gpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


class CondGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2 + 3, 2)
        self.seen = []

    def forward(self, z, c):
        self.seen.append(c.detach().clone())
        return self.lin(torch.cat([z, c], 1)).reshape(-1, 2, 1, 1)


def test_conditional_labels_follow_label_probs_and_reach_every_network():
    gen = GenericGeneratorAdapter(CondGenerator(), z_dim=2, c_dim=3, img_resolution=1,
                                  img_channels=2)
    seen_t = []

    class CondTeacher(GMMDenoiser):
        def forward(self, x, sigma, c=None):
            seen_t.append(c.detach().clone())
            return super().forward(x, sigma)
    teacher = GenericTeacherAdapter(CondTeacher(), img_resolution=1, img_channels=2, label_dim=3)
    r = Refiner(gen, teacher, **dict(TOY, batch=32, label_probs=[0.0, 1.0, 0.0]))
    r.step()
    labels = torch.cat(r.G.module.seen)
    assert torch.equal(labels, torch.tensor([[0.0, 1.0, 0.0]]).expand_as(labels))
    assert all(torch.equal(c, torch.tensor([[0.0, 1.0, 0.0]]).expand_as(c)) for c in seen_t)


def test_refine_function_returns_the_users_module_class(tmp_path):
    gen_module = MLPGenerator()
    out = refine(gen_module, GMMDenoiser(), steps=2, generator_kwargs=dict(z_dim=2),
                 teacher_kwargs=dict(img_resolution=1, img_channels=2), **TOY)
    assert isinstance(out, MLPGenerator) and out is not gen_module
    assert not torch.equal(out.offset, gen_module.offset)


def test_fake_warmup_trains_the_fake_score_before_the_first_generator_update():
    gen, teacher = toy_pair()
    r = Refiner(gen, teacher, **dict(TOY, fake_warmup=5, batch=16))
    g0 = [p.detach().clone() for p in r._g_params]
    adam_steps = lambda opt: [int(st["step"]) for st in opt.state.values()]
    r.step()
    assert set(adam_steps(r.opt_fake)) == {5 + 2} and set(adam_steps(r.opt_G)) == {1}
    # A warm-up changes the run: the first generator update meets a different fake score.
    plain = Refiner(*toy_pair(), **dict(TOY, batch=16))
    plain.step()
    assert set(adam_steps(plain.opt_fake)) == {2}
    assert any(not torch.equal(a, b) for a, b in zip(plain._g_params, r._g_params))
    r.step()   # later steps alternate as usual
    assert set(adam_steps(r.opt_fake)) == {5 + 4} and set(adam_steps(r.opt_G)) == {2}
    assert any(not torch.equal(a, b) for a, b in zip(g0, r._g_params))


def test_generator_learning_rate_halves_every_halflife_and_resumes_on_schedule():
    g = nets.stylegan2_pkl_dict(res=8, channels=1, seed=0)
    t = nets.edm_pkl_dict(res=8, channels=1, seed=2)
    r = Refiner(g, t, batch=4, lr_gen=1e-3, lr_gen_halflife_kimg=0.008, seed=0, device="cpu")
    seen = [r.step()["lr/generator"] for _ in range(5)]
    # updates after 0, 4, 8, 12, 16 images: lr * 0.5 ** (n / 8)
    for k, lr in enumerate(seen):
        assert abs(lr - 1e-3 * 0.5 ** (4 * k / 8)) < 1e-15
    assert r.opt_G.param_groups[0]["lr"] == seen[-1]
    flat = Refiner(g, t, batch=4, lr_gen=1e-3, seed=0, device="cpu")
    assert [flat.step()["lr/generator"] for _ in range(2)] == [1e-3, 1e-3]


def test_generator_learning_rate_ramps_up_linearly_then_holds_and_combines_with_the_halflife():
    g = nets.stylegan2_pkl_dict(res=8, channels=1, seed=0)
    t = nets.edm_pkl_dict(res=8, channels=1, seed=2)
    r = Refiner(g, t, batch=4, lr_gen=1e-3, lr_rampup_kimg=0.012, seed=0, device="cpu")
    seen = [r.step()["lr/generator"] for _ in range(5)]
    # updates after 0, 4, 8, 12, 16 images: lr * min((n + 4) / 12, 1) = 1/3, 2/3, 1, 1, 1
    expect = [1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 1e-3]
    assert all(abs(a - b) < 1e-15 for a, b in zip(seen, expect)), seen
    assert r.opt_G.param_groups[0]["lr"] == seen[-1]
    both = Refiner(g, t, batch=4, lr_gen=1e-3, lr_rampup_kimg=0.008, lr_gen_halflife_kimg=0.008, seed=0,
                   device="cpu")
    seen = [both.step()["lr/generator"] for _ in range(3)]
    expect = [1e-3 * 0.5 ** (n / 8) * min((n + 4) / 8, 1) for n in (0, 4, 8)]
    assert all(abs(a - b) < 1e-15 for a, b in zip(seen, expect)), seen
    with pytest.raises(ValueError, match="lr_rampup_kimg"):
        Refiner(g, t, batch=4, lr_rampup_kimg=-1, device="cpu")


def test_mapping_lr_mult_scales_only_the_mapping_networks_first_update():
    # Adam with beta1 = 0: the first update of each weight is lr * g / (|g| + eps), so with the
    # same gradients a mapping-network weight moves mult times as far and any other as far.
    g = nets.stylegan2_pkl_dict(res=8, channels=1, seed=0)
    t = nets.edm_pkl_dict(res=8, channels=1, seed=2)
    runs = {m: Refiner(g, t, batch=4, lr_gen=1e-3, mapping_lr_mult=m, seed=0, device="cpu") for m in (1.0, 10.0)}
    start = {n: p.detach().clone() for n, p in runs[1.0].G.module.named_parameters()}
    moved = {}
    for m, r in runs.items():
        r.step()
        moved[m] = {n: p.detach() - start[n] for n, p in r.G.module.named_parameters()}
    mapping = [n for n in start if n.startswith("mapping.")]
    assert mapping and len(mapping) < len(start)
    for n in start:
        expect = moved[1.0][n] * (10.0 if n in mapping else 1.0)
        # Each delta is a difference of float32 weights, exact to about one ulp of the weight,
        # and the expected one carries the 1x run's rounding times the factor.
        k = 10.0 if n in mapping else 1.0
        ulp = torch.finfo(torch.float32).eps * (start[n].abs() + 1)
        assert ((moved[10.0][n] - expect).abs() <= (k + 1) * ulp).all(), n
    assert any(moved[1.0][n].abs().max() > 0 for n in mapping)
    with pytest.raises(ValueError, match="mapping"):
        Refiner(*toy_pair(), mapping_lr_mult=2.0, device="cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_refusal_names_the_networks_that_check_their_dtypes(dtype):
    # --precision bf16/fp16 runs the step under torch.autocast. StyleGAN's and EDM's code asserts
    # that each layer returns the dtype it was fed, as upstream's does, and autocast breaks that;
    # the Refiner probes both networks and refuses with a sentence rather than crash mid-step.
    # The probe runs here under CPU autocast, the same mechanism as on CUDA.
    from gan_refine.adapters import as_generator, as_teacher
    from gan_refine.refiner import autocast_refusal
    cpu = torch.device("cpu")
    for net in (as_generator(nets.stylegan2_pkl_dict(res=8, channels=1, seed=0)),
                as_generator(nets.stylegan2_pkl_dict(res=8, channels=1, seed=0, c_dim=3)),
                as_teacher(nets.edm_pkl_dict(res=8, channels=1, seed=2))):
        with pytest.raises(AssertionError):  # what a user would otherwise meet inside the step
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
                if hasattr(net, "z_dim"):
                    net(torch.zeros(2, net.z_dim), torch.zeros(2, dtype=torch.long) if net.c_dim else None)
                else:
                    net(torch.zeros(2, 1, 8, 8), torch.ones(2), None)
        before = torch.get_rng_state()
        assert "asserts its layers' dtypes" in autocast_refusal(net, cpu, dtype)
        assert torch.equal(torch.get_rng_state(), before)  # StyleGAN's noise draws left no trace
    gen, teacher = toy_pair()
    assert autocast_refusal(gen, cpu, dtype) is None and autocast_refusal(teacher, cpu, dtype) is None


class RecordingDenoiser(GMMDenoiser):
    """The analytic teacher, keeping its last call's inputs (the fake score is a deep copy, with
    its own list, so the teacher's record holds only the generator loss's calls)."""

    def forward(self, x, sigma, c=None):
        self.seen = (x.detach().clone(), sigma.detach().reshape(-1).clone())
        return super().forward(x, sigma, c)


class RecordingGenerator(MLPGenerator):
    def forward(self, z, c=None):
        self.last_z = z.detach().clone()
        return super().forward(z, c)


@pytest.mark.parametrize("draws", [2, 3])
def test_noise_draws_average_the_ikl_gradient_over_each_images_draws(draws):
    # Reference in float64 from the recorded inputs: with x_r the teacher's input row r, image
    # i = r mod n, the loss's gradient for the generator's parameters is the gradient of
    # (1 / (draws n)) sum_r <G(z_i), D_phi(x_r) - D_T(x_r)>, the scores held fixed.
    n = 8
    runs = {}
    for k in (1, draws):
        gen = GenericGeneratorAdapter(RecordingGenerator(), z_dim=2, img_resolution=1, img_channels=2)
        teacher = GenericTeacherAdapter(RecordingDenoiser(), img_resolution=1, img_channels=2)
        r = Refiner(gen, teacher, batch=n, lr_gen=1e-3, lr_fake=1e-2, noise_draws=k, seed=4, device="cpu")
        before = copy.deepcopy(r.G.module).double()
        r.step()
        runs[k] = (r, before)
    r, before = runs[draws]
    x_rows, sigma_rows = r.teacher.module.seen
    assert x_rows.shape[0] == draws * n and sigma_rows.shape[0] == draws * n
    # The first draw is the one-draw run's: the random stream is as the official loop has it.
    assert torch.equal(sigma_rows[:n], runs[1][0].teacher.module.seen[1])
    assert not torch.equal(sigma_rows[n:2 * n], sigma_rows[:n])
    z = r.G.module.last_z.double()
    x0 = before(z)
    with torch.no_grad():
        fake = copy.deepcopy(r.fake_score.module).double()
        teacher = copy.deepcopy(r.teacher.module).double()
        s = sigma_rows.double().reshape(-1, 1, 1, 1)
        g = fake(x_rows.double(), s) - teacher(x_rows.double(), s)
    loss = (x0.repeat(draws, 1, 1, 1) * g).sum() / (draws * n)
    ref = torch.autograd.grad(loss, list(before.parameters()))
    for (name, p), want in zip(r.G.module.named_parameters(), ref):
        assert torch.allclose(p.grad.double(), want, rtol=1e-4, atol=1e-9), name
    with pytest.raises(ValueError, match="noise_draws"):
        Refiner(*toy_pair(), noise_draws=2, update_order="single-forward", device="cpu")
    with pytest.raises(ValueError, match="noise_draws"):
        Refiner(*toy_pair(), noise_draws=0, device="cpu")
