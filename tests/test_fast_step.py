"""The faster step: the single-forward update order against a plain re-implementation, NaN/inf
checks read once per step, the fake score's rollback, activation checkpointing and the compile
fallback (each against the reference path or an independent computation)."""

import copy
import sys

import pytest
import torch

from gan_refine import nets
from gan_refine.acceleration import checkpoint_units
from gan_refine.losses import edm_weight, ikl_generator_loss
from gan_refine.pickles import load_network_pkl, save_network_pkl
from gan_refine.refiner import NonFiniteError, Refiner
from gan_refine.rollback import TensorRollback

from test_refiner import TOY, DropoutDenoiser, GMMDenoiser, distance_to_truth, toy_pair


def _tensors(r):
    """Every tensor of a refiner's state, by name (the global RNG left out)."""
    out = {}

    def walk(obj, prefix):
        if torch.is_tensor(obj):
            out[prefix] = obj.clone()
        elif isinstance(obj, dict):
            for k, v in obj.items():
                if k != "global":
                    walk(v, f"{prefix}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{prefix}/{i}")
    walk(r.state_dict(), "")
    return out


def _same_state(a, b):
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


class _Recorder:
    """Forward hooks recording what each network was called with, in order."""

    def __init__(self, **nets):
        self.calls = []
        for name, net in nets.items():
            net.register_forward_hook(lambda m, args, out, name=name: self.calls.append(
                (name, m.training, [a.detach().clone() if torch.is_tensor(a) else a for a in args],
                 out.detach().clone())))

    def of(self, name):
        return [c for c in self.calls if c[0] == name]


# ---------------------------------------------------------------------------- update order

def test_single_forward_step_matches_a_plain_reimplementation():
    """One step of update_order='single-forward' against the algorithm written out here: one
    generator sample; the generator's gradient D_phi - D_T and the fake score's denoising loss
    on that sample's x and sigma, both from the networks as they were before the step; then one
    Adam step each. The teacher is the analytic GMM (no dropout: train and eval agree)."""
    cfg = dict(TOY, batch=16, fake_updates=1, update_order="single-forward")
    r = Refiner(*toy_pair(), **cfg)
    r.step()  # past the first step, so Adam has state and the EMA is warm
    G0, F0 = copy.deepcopy(r.G), copy.deepcopy(r.fake_score)
    start = [p.detach().clone() for p in r.G.parameters()]
    opt_G0, opt_F0 = copy.deepcopy(r.opt_G.state_dict()), copy.deepcopy(r.opt_fake.state_dict())
    rec = _Recorder(G=r.G, fake=r.fake_score, teacher=r.teacher)
    r.step()
    (g_call,) = rec.of("G")  # one generator forward per step
    (t_call,) = rec.of("teacher")
    f_calls = rec.of("fake")
    assert [training for _, training, _, _ in f_calls] == [False, True]  # g in eval, loss in train
    z, c = g_call[2]
    x, sigma = t_call[2][0], t_call[2][1]
    for _, _, (fx, fsigma, _), _ in f_calls:  # the fake score saw the generator's x and sigma
        assert torch.equal(fx, x) and torch.equal(fsigma, sigma)

    # The reference, from the state before the step.
    x0 = G0(z, c)
    with torch.no_grad():
        g = F0.eval()(x, sigma, c) - r.teacher(x, sigma, c)
    gen_loss = (g * x0).flatten(1).sum(1).mean()
    F0.train()
    fake_loss = (edm_weight(sigma, 0.5) * (F0(x, sigma, c) - x0.detach()).square().flatten(1).sum(1)).mean()
    opt_G = torch.optim.Adam(list(G0.trainable_parameters()), lr=cfg["lr_gen"], betas=(0.0, 0.999))
    opt_F = torch.optim.Adam(list(F0.parameters()), lr=cfg["lr_fake"], betas=(0.0, 0.999))
    opt_G.load_state_dict(opt_G0)
    opt_F.load_state_dict(opt_F0)
    gen_loss.backward(inputs=list(G0.trainable_parameters()))
    fake_loss.backward(inputs=list(F0.parameters()))
    opt_G.step()
    opt_F.step()
    for a, b in zip(G0.parameters(), r.G.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    for a, b in zip(F0.parameters(), r.fake_score.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    moved = max((a - b).abs().max().item() for a, b in zip(start, r.G.parameters()))
    assert moved > 1e-4  # the comparison is not between two unchanged networks


def test_official_order_samples_twice_and_trains_the_fake_score_first():
    r = Refiner(*toy_pair(), **dict(TOY, batch=16, fake_updates=1))
    rec = _Recorder(G=r.G, fake=r.fake_score, teacher=r.teacher)
    r.step()
    assert [n for n, *_ in rec.calls] == ["G", "fake", "G", "fake", "teacher"]


def test_single_forward_with_train_mode_calls_the_fake_score_once_with_the_teachers_mask():
    r = Refiner(*toy_pair(teacher=DropoutDenoiser()),
                **dict(TOY, batch=64, fake_updates=1, teacher_mode="train", update_order="single-forward"))
    r.step()
    rec = _Recorder(fake=r.fake_score.module.drop, teacher=r.teacher.module.drop, G=r.G)
    r.step()
    assert [n for n, *_ in rec.calls] == ["G", "fake", "teacher"]
    ((_, _, _, f_out),), ((_, _, _, t_out),) = rec.of("fake"), rec.of("teacher")
    assert torch.equal(f_out == 0, t_out == 0) and (f_out == 0).any()  # one dropout mask


@pytest.mark.parametrize("teacher_mode", ["eval", "train"])
def test_single_forward_also_pulls_the_generator_to_the_analytic_teacher(teacher_mode):
    # Longer and looser than the official order's d0 / 8 at 300 steps: on this toy, at these
    # large learning rates, the fake score's one-step lag behind the generator slows it down and
    # makes it noisier, and the trajectory moves with the CPU's floating-point paths. Distance
    # over d0 for seeds 0-3 at 300 / 450 / 600 steps on an AMD EPYC: 0.10-0.21 / 0.05-0.26 /
    # 0.04-0.07 (seed 0 bumps to 0.26 at 450, past the bound, before falling); on an Intel Xeon
    # 450 steps gave 0.07-0.21. At 600 steps the worst seen is a third of the bound.
    r = Refiner(*toy_pair(), **dict(TOY, update_order="single-forward", teacher_mode=teacher_mode))
    d0 = distance_to_truth(r.G_ema)
    r.run(steps=600)
    assert distance_to_truth(r.G_ema) < d0 / 4


def test_bad_update_order_is_refused():
    with pytest.raises(ValueError, match="update_order must be one of official, single-forward"):
        Refiner(*toy_pair(), update_order="jacobi")


# ---------------------------------------------------------------------------- host transfers

@pytest.mark.parametrize("order, fake_updates, expected", [
    ("official", 2, 4),        # one seed per fake update, the step's seed, the statistics
    ("single-forward", 1, 2),  # the step's seeds, the statistics
])
def test_a_step_reads_from_the_device_only_for_seeds_and_statistics(monkeypatch, order, fake_updates, expected):
    r = Refiner(*toy_pair(), **dict(TOY, fake_updates=fake_updates, update_order=order))
    r.step()
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            # Adam reads its step counter, which lives on the CPU whatever the device.
            if "torch/optim" not in sys._getframe(1).f_code.co_filename:
                reads.append(_name)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)
    r.step()
    monkeypatch.undo()
    assert len(reads) == expected, reads


# ---------------------------------------------------------------------------- NaN/inf

@pytest.mark.parametrize("order, fake_updates", [("official", 2), ("single-forward", 2),
                                                 ("single-forward", 1)])
def test_nan_generator_loss_leaves_the_refiner_as_it_was(order, fake_updates):
    poison = {"on": False}

    def loss(*args):
        per_sample, figs = ikl_generator_loss(*args)
        return (per_sample * float("nan"), figs) if poison["on"] else (per_sample, figs)
    cfg = dict(TOY, batch=16, fake_updates=fake_updates, update_order=order)
    r = Refiner(*toy_pair(), generator_loss=loss, **cfg)
    r.step()
    before = _tensors(r)
    poison["on"] = True
    with pytest.raises(NonFiniteError, match="generator loss is NaN/inf at step 2; the refiner was left"):
        r.step()
    assert _same_state(before, _tensors(r)) == [] and r.cur_step == 1
    assert r._fake_snapshot_taken == (order == "official" or fake_updates > 1)
    poison["on"] = False
    r.step()
    ref = Refiner(*toy_pair(), generator_loss=loss, **cfg)
    ref.step()
    ref.step()
    assert _same_state(_tensors(ref), _tensors(r)) == []


class _NaNAtLargeSigma(GMMDenoiser):
    """Finite weights, NaN output where sigma > 1: bad from the very first call."""

    def forward(self, x, sigma, c=None):
        out = super().forward(x, sigma, c)
        return torch.where(sigma.reshape(-1, 1, 1, 1) > 1, float("nan"), out)


@pytest.mark.parametrize("order, overlap", [("official", False), ("single-forward", False),
                                            ("single-forward", True)])
def test_nan_on_the_first_step_blames_the_inputs_and_undoes_the_warmup(order, overlap):
    r = Refiner(*toy_pair(teacher=_NaNAtLargeSigma()), overlap=overlap,
                **dict(TOY, fake_warmup=3, update_order=order))
    before = _tensors(r)
    # The fake score copies the teacher: the first fake-score loss is the first bad value.
    with pytest.raises(NonFiniteError, match="fake-score loss is NaN/inf at step 1; this happened before"):
        r.step()
    assert _same_state(before, _tensors(r)) == [] and not r.opt_fake.state and r._fake_snapshot_taken


def test_rollback_restores_weights_buffers_and_adam_state_exactly():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    rb = TensorRollback([net], [opt])
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))

    def update():
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    start = copy.deepcopy((net.state_dict(), opt.state_dict()))
    rb.snapshot()  # Adam has no state yet
    update()
    rb.restore()
    assert not opt.state
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), start[0].values()))
    update()
    mid = copy.deepcopy((net.state_dict(), opt.state_dict()))
    twin = copy.deepcopy((net, opt))
    for _ in range(2):  # the second round reuses the buffers allocated by the first
        rb.snapshot()
        update()
        update()
        rb.restore()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), mid[0].values()))
    for st, ref in zip(opt.state_dict()["state"].values(), mid[1]["state"].values()):
        assert all(torch.equal(st[k], ref[k]) for k in ref)
    update()  # and the optimiser goes on exactly as one that never took the undone steps
    twin_net, twin_opt = twin
    twin_opt.zero_grad()
    twin_net(x).square().mean().backward()
    twin_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), twin_net.state_dict().values()))


# ---------------------------------------------------------------------------- checkpointing, compile

@pytest.fixture(scope="module")
def tiny_pkls(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast-pkls")
    save_network_pkl(nets.stylegan2_pkl_dict(res=8, seed=0), d / "gen.pkl")
    save_network_pkl(nets.edm_pkl_dict(res=8, seed=3), d / "teacher.pkl")  # dropout 0.1
    return str(d / "gen.pkl"), str(d / "teacher.pkl")


@pytest.mark.parametrize("kw", [dict(), dict(update_order="single-forward", teacher_mode="train"),
                                dict(loss="sid", teacher_mode="train")])
def test_activation_checkpointing_changes_nothing_but_memory(tiny_pkls, kw):
    """Same weights bit for bit with every network checkpointed: the recomputation replays
    StyleGAN's noise and the dropout masks."""
    gen, teacher = tiny_pkls
    cfg = dict(batch=4, device="cpu", lr_gen=1e-3, lr_fake=1e-3, **kw)
    a = Refiner(load_network_pkl(gen), load_network_pkl(teacher), **cfg)
    b = Refiner(load_network_pkl(gen), load_network_pkl(teacher), activation_checkpointing="all", **cfg)
    assert [type(m).__name__ for m in checkpoint_units(b.G)] == ["SynthesisBlock"] * 2
    assert len(checkpoint_units(b.fake_score)) == 10
    calls = {"a": 0, "b": 0}  # calls of the blocks' first layers: the recomputation calls them too
    for name, r in (("a", a), ("b", b)):
        for m in checkpoint_units(r.fake_score) + checkpoint_units(r.G):
            next(m.children()).register_forward_hook(lambda *args, name=name: calls.__setitem__(name, calls[name] + 1))
    for _ in range(2):
        a.step()
        b.step()
    assert _same_state(_tensors(a), _tensors(b)) == []
    # Blocks ran again during the backward passes (checkpointing did happen)...
    assert calls["b"] >= calls["a"] + 2 * (10 + 2), calls
    # ...and no patched forward outlives a step (exported pickles hold the class's own).
    for net in (b.G, b.fake_score, b.teacher):
        assert not any("forward" in vars(m) for m in net.modules())
    assert b.metadata()["execution"]["activation_checkpointing"] == ["fake-score", "generator", "teacher"]


def test_compile_falls_back_to_the_eager_networks_with_one_warning(monkeypatch):
    def broken_compile(net, **kw):
        def call(*a, **k):
            raise RuntimeError("no compiler here\nsecond line")
        return call
    monkeypatch.setattr(torch, "compile", broken_compile)
    a = Refiner(*toy_pair(), **TOY)
    with pytest.warns(RuntimeWarning, match="torch.compile of the (generator|fake score|teacher) failed "
                                            "[(]RuntimeError: no compiler here[)]") as rec:
        b = Refiner(*toy_pair(), compile=True, **TOY)
        for _ in range(2):
            b.step()
    assert len([w for w in rec if "torch.compile" in str(w.message)]) == 3  # one per network
    for _ in range(2):
        a.step()
    assert _same_state(_tensors(a), _tensors(b)) == []
    assert b.metadata()["execution"]["compile"] == "default"


def test_compile_modes_map_to_inductor_options(monkeypatch):
    """torch.compile takes a mode or options, not both: a mode becomes inductor's options for
    it (upstream's list_mode_options), with fallback_random always set."""
    seen = []

    def recording_compile(net, **kw):
        seen.append(kw)
        return net
    monkeypatch.setattr(torch, "compile", recording_compile)
    r = Refiner(*toy_pair(), compile="reduce-overhead", **TOY)
    r.step()
    assert seen and all("mode" not in kw for kw in seen)
    assert all(kw["options"] == {"triton.cudagraphs": True, "fallback_random": True} for kw in seen)
    assert r.metadata()["execution"]["compile"] == "reduce-overhead"
    with pytest.raises(ValueError, match="compile must be True, False or one of default, reduce-overhead"):
        Refiner(*toy_pair(), compile="fastest", **TOY)


def test_bad_execution_options_are_refused():
    with pytest.raises(ValueError, match="unknown part.s. gpu"):
        Refiner(*toy_pair(), activation_checkpointing=["gpu"])
    with pytest.raises(ValueError, match="do not combine"):
        Refiner(*toy_pair(), compile=True, activation_checkpointing="all")


# ---------------------------------------------------------------------------- overlap

@pytest.mark.parametrize("kw", [dict(), dict(augment=0.5), dict(fake_updates=2), dict(teacher_mode="train"),
                                dict(teacher_mode="train", fake_updates=2)])
def test_overlap_changes_nothing_but_speed(tiny_pkls, kw):
    """The fake score's update (eval teacher) or backward (train-mode teacher, one shared
    forward) on the worker thread gives the serial single-forward step's weights, optimiser
    states and statistics bit for bit. The teacher and its copy hold dropout and the generator
    StyleGAN noise, so a random draw made on the wrong thread, or the fake score called in the
    wrong mode, shows."""
    gen, teacher = tiny_pkls
    cfg = dict(batch=4, device="cpu", lr_gen=1e-3, lr_fake=1e-3, update_order="single-forward", **kw)
    a = Refiner(load_network_pkl(gen), load_network_pkl(teacher), **cfg)
    b = Refiner(load_network_pkl(gen), load_network_pkl(teacher), overlap=True, **cfg)
    assert b.overlap_active and not a.overlap_active
    start = _tensors(a)
    for _ in range(3):
        sa, sb = a.step(), b.step()
    assert _same_state(_tensors(a), _tensors(b)) == []
    after = _tensors(b)
    moved = [k for k in start if k.startswith(("/G/", "/fake_score/")) and not torch.equal(start[k], after[k])]
    assert len(moved) > 10, moved  # and the networks did move
    timing = {"sec_per_step", "images_per_sec"}
    assert {k: v for k, v in sa.items() if k not in timing} == {k: v for k, v in sb.items() if k not in timing}
    # The eval twin computes over the fake score's own tensors, not copies of them.
    twin = b._fake_eval_twin()
    assert all(p is q for p, q in zip(twin.parameters(), b.fake_score.parameters()))
    assert not twin.training and b.metadata()["execution"]["overlap"] is True
    b.close()
    b.step()  # a closed refiner starts a new worker when it needs one


@pytest.mark.parametrize("kw, why", [(dict(update_order="official"), "single-forward"),
                                     (dict(teacher_mode="train", augment=0.5), "dropout"),
                                     (dict(loss="sid"), "IKL"),
                                     (dict(activation_checkpointing="generator"), "checkpointing")])
def test_overlap_is_not_used_where_it_would_change_the_result(tiny_pkls, kw, why):
    """Where both threads would draw random numbers (a train-mode teacher whose fake score sees
    augmented images, recomputation under activation checkpointing), the generator's loss sends
    gradients through the networks (SiD), or the order is the official one, the step runs
    serially."""
    gen, teacher = tiny_pkls
    cfg = dict(batch=4, device="cpu", lr_gen=1e-3, lr_fake=1e-3, update_order="single-forward")
    execution = {k: kw.pop(k) for k in ("activation_checkpointing",) if k in kw}
    cfg.update(kw)
    r = Refiner(load_network_pkl(gen), load_network_pkl(teacher), overlap=True, **execution, **cfg)
    assert not r.overlap_active and why in r.overlap_unused_reason()
    r.step()
    assert r._worker is None
