"""Step speed: one full iteration of `Refiner.step` against the official Diff-Instruct loop.

The official loop structure is re-implemented plainly here (`OfficialLoop`): per iteration a
fake-score update on a generator sample drawn without gradients, then a generator update on a
second sample drawn with gradients, the fake score and the teacher called separately, Adam for
both, `.item()` statistics after each update and the generator's EMA. Both run in this process
on copies of the same networks, with the same batch, repeats interleaved, medians reported.

Before any timing, one fixed batch checks that the Refiner's reference order computes the same
gradients as the official loop (the Refiner's random draws are recorded and replayed into the
official loop, which seeds torch's generator where the Refiner does, so StyleGAN's noise and the
dropout masks agree too).

    python benchmarks/step_speed.py                  # digits pair, 1 and 2 threads (+ CUDA)
    python benchmarks/step_speed.py --cifar          # also the CIFAR-10-size fixtures (slow)
    python benchmarks/step_speed.py --quick          # a smoke run
    python benchmarks/step_speed.py --out docs/step_speed   # also writes .md and .json

Time shares come from forward hooks on the three networks and timers around backward passes,
optimiser steps and gradient clipping, in separate instrumented steps (not the timed ones);
"overhead" is the rest (random draws, losses, checks, statistics, EMA). Peak memory on CPU is
the growth of the process's peak resident set (getrusage ru_maxrss) over three steps, in a
fresh subprocess per configuration and batch; on CUDA, torch.cuda.max_memory_allocated.
"""

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gan_refine  # noqa: E402
from gan_refine import nets  # noqa: E402
from gan_refine.adapters import as_generator, as_teacher  # noqa: E402
from gan_refine.refiner import Refiner  # noqa: E402
from gan_refine.snapshot import atomic_write_text  # noqa: E402
from quality import cpu_model  # noqa: E402

# The settings both loops use (the documented digits settings; lr does not change the cost).
METHOD = dict(lr_gen=2e-3, lr_fake=1e-3, P_mean=0.0, P_std=1.2, betas=(0.0, 0.999), adam_eps=1e-8,
              ema_kimg=500.0, ema_rampup=0.05)


def load_pair(name):
    if name == "digits":
        return gan_refine.load_network_pkl("digits"), gan_refine.load_network_pkl("digits-edm")
    if name == "cifar":
        return (nets.stylegan2_pkl_dict(res=32, G=nets.stylegan2_cifar10()),
                nets.edm_pkl_dict(res=32, net=nets.edm_ddpmpp_cifar10()))
    raise ValueError(name)


@contextlib.contextmanager
def seeded(seed, device):
    """torch's global generators seeded for a block and restored after (as the Refiner does)."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def tf32_off(deterministic=False):
    """TF32 off for cuDNN and matmuls for a block; with `deterministic`, also cuDNN's
    deterministic algorithms (no autotuning)."""
    cudnn, mm = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, mm.allow_tf32, cudnn.deterministic, cudnn.benchmark
    cudnn.allow_tf32 = mm.allow_tf32 = False
    if deterministic:
        cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.allow_tf32, mm.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved


class OfficialLoop:
    """The official loop structure. `step()` draws its own batch, as the official code does;
    `step(replay)` takes the latents, noise levels, noise and seeds a Refiner drew, in the
    order it drew them, so that both can be compared on one batch."""

    def __init__(self, gen_data, teacher_data, batch, device, teacher_mode="eval", seed=0):
        self.batch, self.device, self.teacher_mode = batch, device, teacher_mode
        self.G = copy.deepcopy(as_generator(gen_data)).to(device).train().requires_grad_(False)
        self.g_params = list(self.G.trainable_parameters())
        for p in self.g_params:
            p.requires_grad_(True)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.T = as_teacher(teacher_data).to(device).eval().requires_grad_(False)
        self.F = copy.deepcopy(self.T).requires_grad_(True)
        self.f_params = list(self.F.parameters())
        adam = dict(betas=METHOD["betas"], eps=METHOD["adam_eps"])
        self.opt_G = torch.optim.Adam(self.g_params, lr=METHOD["lr_gen"], **adam)
        self.opt_F = torch.optim.Adam(self.f_params, lr=METHOD["lr_fake"], **adam)
        self.sigma_data = float(self.T.sigma_data)
        self.rng = torch.Generator(device=device).manual_seed(seed)
        self.nimg = 0

    def _draw(self, x_like=None):
        if x_like is None:
            return self.G.sample_latents(self.batch, generator=self.rng, device=self.device)
        n = self.batch
        sigma = (torch.randn([n], generator=self.rng, device=self.device) * METHOD["P_std"] + METHOD["P_mean"]).exp()
        return sigma, torch.randn(x_like.shape, generator=self.rng, device=self.device)

    def step(self, replay=None):
        # The official code (EDM's training loop, which Diff-Instruct's is built on) turns TF32
        # off for cuDNN and matmuls: fp32 means fp32, as in the Refiner's default precision.
        with tf32_off():
            return self._step(replay)

    def _step(self, replay=None):
        take = (lambda kind: next(replay)[1]) if replay is not None else None
        scope = (lambda: seeded(take("seed"), self.device)) if replay is not None else contextlib.nullcontext
        # Fake-score update on a sample drawn without gradients.
        z, c = take("latents") if replay is not None else self._draw()
        with scope():
            with torch.no_grad():
                x0 = self.G(z, c)
            sigma, noise = take("noise") if replay is not None else self._draw(x0)
            self.F.train()
            s = sigma.reshape(-1, 1, 1, 1)
            D = self.F(x0 + s * noise, sigma, c)
            weight = (s ** 2 + self.sigma_data ** 2) / (s * self.sigma_data) ** 2
            loss = (weight * (D - x0) ** 2).sum() / self.batch
            self.opt_F.zero_grad(set_to_none=True)
            loss.backward(inputs=self.f_params)
            self.opt_F.step()
        stats = {"loss/fake_score": loss.item()}
        # Generator update on a second sample, with gradients.
        z, c = take("latents") if replay is not None else self._draw()
        with scope():
            x0 = self.G(z, c)
            sigma, noise = take("noise") if replay is not None else self._draw(x0)
            x = x0.detach() + sigma.reshape(-1, 1, 1, 1) * noise
            with torch.no_grad():
                if self.teacher_mode == "train":
                    self.F.train()
                    self.T.train()
                    dropout_seed = take("seed") if replay is not None else int(torch.randint(2 ** 62, [1]))
                    with seeded(dropout_seed, self.device):
                        d_fake = self.F(x, sigma, c)
                    with seeded(dropout_seed, self.device):
                        d_teacher = self.T(x, sigma, c)
                    self.T.eval()
                else:
                    self.F.eval()
                    d_fake = self.F(x, sigma, c)
                    d_teacher = self.T(x, sigma, c)
            loss = ((d_fake - d_teacher) * x0).sum() / self.batch
            self.opt_G.zero_grad(set_to_none=True)
            loss.backward(inputs=self.g_params)
            self.opt_G.step()
        stats["loss/generator"] = loss.item()
        self.nimg += self.batch
        with torch.no_grad():
            half_life = min(METHOD["ema_kimg"] * 1000, self.nimg * METHOD["ema_rampup"])
            beta = 0.5 ** (self.batch / max(half_life, 1e-8))
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)
        return stats

    def nets(self):
        return self.G, self.F, self.T


def make_refiner(gen_data, teacher_data, batch, device, **kw):
    return Refiner(gen_data, teacher_data, batch=batch, device=str(device), **METHOD, **kw)


def refiner_nets(r):
    return r.G, r.fake_score, r.teacher


# ---------------------------------------------------------------------------- same gradients

def _record_draws(r):
    """Wrap a Refiner's random draws so that each value it draws is also appended to a list."""
    log = []

    def wrap(name, kind):
        orig = getattr(r, name)

        def call(*a, **k):
            out = orig(*a, **k)
            log.append((kind, out))
            return out
        setattr(r, name, call)
    wrap("_latents", "latents")
    wrap("_noise", "noise")
    wrap("_draw_seed", "seed")
    return log


def _record_grads(opt, params):
    """Wrap an optimiser's step to keep a copy of the gradients it is about to apply."""
    seen = []
    orig = opt.step

    def step(*a, **k):
        # A parameter the loss does not reach (EDM's augmentation mapping) has no gradient.
        seen.append([torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params])
        return orig(*a, **k)
    opt.step = step
    return seen


def _rel(a, b):
    num = max((x - y).abs().max().item() for x, y in zip(a, b))
    den = max(y.abs().max().item() for y in b)
    return num / max(den, 1e-30)


def check_same_gradients(gen_data, teacher_data, batch, device, teacher_mode):
    """One step of the Refiner (reference order) and of the official loop from the same state
    on the same batch: relative differences of the gradients and of the updated weights."""
    r = make_refiner(gen_data, teacher_data, batch, device, teacher_mode=teacher_mode)
    off = OfficialLoop(gen_data, teacher_data, batch, device, teacher_mode=teacher_mode)
    log = _record_draws(r)
    g_r, f_r = _record_grads(r.opt_G, r._g_params), _record_grads(r.opt_fake, r._f_params)
    g_o, f_o = _record_grads(off.opt_G, off.g_params), _record_grads(off.opt_F, off.f_params)
    g0, f0 = [p.detach().clone() for p in off.g_params], [p.detach().clone() for p in off.f_params]
    r.step()
    off.step(replay=iter(log))

    def update(params, start):
        return [p.detach() - s for p, s in zip(params, start)]
    out = {"fake-score gradient": _rel(f_r[0], f_o[0]), "generator gradient": _rel(g_r[0], g_o[0]),
           "fake-score update": _rel(update(r._f_params, f0), update(off.f_params, f0)),
           "generator update": _rel(update(r._g_params, g0), update(off.g_params, g0))}
    # A control: the official loop's gradient against the Refiner's *next* step differs.
    r.step()
    out["control: next step's generator gradient"] = _rel(g_r[1], g_o[0])
    return out


# ---------------------------------------------------------------------------- timing

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(impls, repeats, device):
    """{name: median seconds per step} over `repeats` rounds, one step of each per round."""
    for fn in impls.values():  # warm-up (first-step allocations, the warm-up of the fake score)
        fn()
    times = {k: [] for k in impls}
    for _ in range(repeats):
        for k, fn in impls.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, times


class Shares:
    """Where one step's time goes: generator / teacher / fake score (forward and backward),
    optimiser (Adam, clipping, gradient norms), overhead (the rest)."""

    def __init__(self, G, F, T, device):
        self.nets = {"generator": G, "fake score": F, "teacher": T}
        self.device = device
        self.g_ids = {id(p) for p in G.parameters()}
        self.t = {k: 0.0 for k in ("generator", "teacher", "fake score", "optimiser")}

    @contextlib.contextmanager
    def installed(self):
        handles, t0 = [], {}
        patched = []

        def pre(name):
            def hook(m, args):
                sync(self.device)
                t0[name] = time.perf_counter()
            return hook

        def post(name):
            def hook(m, args, out):
                sync(self.device)
                self.t[name] += time.perf_counter() - t0.pop(name)
            return hook
        for name, net in self.nets.items():
            handles += [net.register_forward_pre_hook(pre(name)), net.register_forward_hook(post(name))]

        def timed(owner, fn, who):
            def call(*a, **k):
                sync(self.device)
                start = time.perf_counter()
                out = fn(*a, **k)
                sync(self.device)
                self.t[who(a, k)] += time.perf_counter() - start
                return out
            patched.append((owner, fn.__name__, fn))
            setattr(owner, fn.__name__, call)

        def backward_owner(a, k):
            inputs = k.get("inputs")
            return "generator" if inputs and id(inputs[0]) in self.g_ids else "fake score"
        timed(torch.Tensor, torch.Tensor.backward, backward_owner)
        timed(torch.optim.Adam, torch.optim.Adam.step, lambda a, k: "optimiser")
        timed(torch.nn.utils, torch.nn.utils.clip_grad_norm_, lambda a, k: "optimiser")
        if hasattr(torch.nn.utils, "get_total_norm"):  # the Refiner's gradient norm when not clipping
            timed(torch.nn.utils, torch.nn.utils.get_total_norm, lambda a, k: "optimiser")
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            for owner, name, fn in patched:
                setattr(owner, name, fn)


def time_shares(step, nets_of, steps, device):
    G, F, T = nets_of
    sh = Shares(G, F, T, device)
    total = 0.0
    with sh.installed():
        for _ in range(steps):
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            total += time.perf_counter() - t0
    parts = dict(sh.t, overhead=total - sum(sh.t.values()))
    return {k: v / total for k, v in parts.items()}, total / steps


# ---------------------------------------------------------------------------- configurations

ORDERS = {"official": "official order", "single-forward": "single-forward"}  # update order -> row label


def configurations(gen_data, teacher_data, batch, device, teacher_mode, compile_modes=(), ckpt=None):
    """name -> (step function, (G, F, T)) for the official loop and the Refiner's variants."""
    out = {}
    off = OfficialLoop(gen_data, teacher_data, batch, device, teacher_mode=teacher_mode)
    out["official loop"] = (off.step, off.nets())
    # On CUDA also TF32 convolutions and matmuls: a lever the official loop does not take.
    for precision in ("fp32", "tf32") if device.type == "cuda" else ("fp32",):
        for order in ORDERS:
            r = make_refiner(gen_data, teacher_data, batch, device, teacher_mode=teacher_mode,
                             update_order=order, precision=precision)
            out[f"Refiner, {ORDERS[order]}" + (", tf32" if precision == "tf32" else "")] = (r.step, refiner_nets(r))
    if device.type == "cpu" and torch.get_num_threads() >= 2:
        # The two branches split the intra-op threads: the same cores as the loops above.
        r = make_refiner(gen_data, teacher_data, batch, device, teacher_mode=teacher_mode,
                         update_order="single-forward", overlap=True)
        out[f"Refiner, single-forward, overlap (2 x {torch.get_num_threads() // 2} threads)"] = (r.step, refiner_nets(r))
    for mode in compile_modes:
        for order in ORDERS:
            r = make_refiner(gen_data, teacher_data, batch, device, teacher_mode=teacher_mode,
                             update_order=order, compile=mode)
            t0 = time.perf_counter()
            r.step()
            r.step()  # the second step meets no new mode: compiled graphs are all built
            r.step()  # CUDA graphs: warmed up, recorded, then replayed from here on
            sync(device)
            label = f"Refiner, {ORDERS[order]}, compiled ({mode})"
            failed = sorted({f"{c.name}: {c.failed}" for c in r._compiled.values() if c.failed})
            if failed:  # a network that failed to compile runs eagerly: say so in the row
                label += " [fell back to eager: " + "; ".join(failed) + "]"
            out[label] = (r.step, refiner_nets(r))
            out.setdefault("_compile_seconds", {})[label] = time.perf_counter() - t0
    if ckpt:
        r = make_refiner(gen_data, teacher_data, batch, device, teacher_mode=teacher_mode,
                         update_order="single-forward", activation_checkpointing=ckpt)
        out[f"Refiner, single-forward, checkpointing {ckpt}"] = (r.step, refiner_nets(r))
    return out


def speed_table(pair, gen_data, teacher_data, batch, device, repeats, teacher_mode, args, log, compile_modes=None):
    if compile_modes is None:
        compile_modes = ["default"] if args.compile else []
    confs = configurations(gen_data, teacher_data, batch, device, teacher_mode, compile_modes=compile_modes)
    compile_s = confs.pop("_compile_seconds", None)
    med, raw = interleaved({k: v[0] for k, v in confs.items()}, repeats, device)
    rows = []
    base = med["official loop"]
    for name, (step, nets_of) in confs.items():
        # No shares for a compiled step (no modules to hook) or an overlapped one (the parts
        # run at once: their times do not add up to the step's).
        timed = "compiled" not in name and "overlap" not in name
        shares, _ = (time_shares(step, nets_of, 2, device) if timed else (None, None))
        rows.append(dict(config=name, ms=1000 * med[name], ratio=base / med[name], shares=shares,
                         all_ms=[1000 * t for t in raw[name]]))
    out = dict(pair=pair, batch=batch, device=str(device), threads=torch.get_num_threads(),
               teacher_mode=teacher_mode, repeats=repeats, rows=rows, compile_seconds=compile_s)
    log(markdown_speed(out))
    return out


def markdown_speed(t):
    lines = [f"{t['pair']}, batch {t['batch']}, {t['device']}"
             f"{', %d thread(s)' % t['threads'] if t['device'] == 'cpu' else ''}, teacher mode "
             f"{t['teacher_mode']}, median of {t['repeats']} interleaved steps", "",
             "| loop | ms / step | speed vs official | generator | teacher | fake score | optimiser | overhead |",
             "|---|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        sh = r["shares"]
        cells = ([f"{100 * sh[k]:.0f}%" for k in ("generator", "teacher", "fake score", "optimiser", "overhead")]
                 if sh else ["-"] * 5)
        lines.append(f"| {r['config']} | {r['ms']:.0f} | {r['ratio']:.2f}x | " + " | ".join(cells) + " |")
    if t.get("compile_seconds"):
        lines.append("\nCompiling (the first three steps of each compiled Refiner): " +
                     ", ".join(f"{k.split(', ', 1)[1]} {v:.0f} s" for k, v in t["compile_seconds"].items()))
    return "\n".join(lines) + "\n"


def batch_table(gen_data, teacher_data, batches, device, repeats, log):
    rows = []
    for b in batches:
        confs = configurations(gen_data, teacher_data, b, device, "eval")
        med, _ = interleaved({k: v[0] for k, v in confs.items()}, repeats, device)
        rows.append(dict(batch=b, **{k: 1000 * v for k, v in med.items()}))
        del confs
    names = [k for k in rows[0] if k != "batch"]
    lines = ["Time per step vs batch (teacher mode eval; ms, and ms per image)", "",
             "| batch | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['batch']} | " + " | ".join(f"{r[n]:.0f} ({r[n] / r['batch']:.1f})" for n in names) + " |")
    log("\n".join(lines) + "\n")
    return rows


# ---------------------------------------------------------------------------- single levers

def levers_table(gen_data, teacher_data, batch, device, repeats, log):
    """Levers measured on their own, interleaved: what each would save per step."""
    from gan_refine.rollback import TensorRollback
    r = make_refiner(gen_data, teacher_data, batch, device)
    r.step()
    T, F = r.teacher, r.fake_score
    z, c = r._latents()
    with torch.no_grad():
        x0 = r.G(z, c)
    sigma, noise = r._noise(x0)
    x = x0 + sigma.reshape(-1, 1, 1, 1) * noise
    T_cl = copy.deepcopy(T).to(memory_format=torch.channels_last)
    F_cl = copy.deepcopy(F).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def teacher(net, xx, mode):
        def call():
            with mode():
                net(xx, sigma, c)
        return call

    def fake_step(net, xx):
        params = list(net.parameters())

        def call():
            net.train()
            ((net(xx, sigma, c) - x0) ** 2).sum().backward(inputs=params)
        return call
    opts = {}
    gen = torch.Generator(device=device).manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen, device=device) for p in F.parameters()]
    for kind in ("for-loop", "foreach", "fused"):
        net = copy.deepcopy(F)
        params = list(net.parameters())
        for p, g in zip(params, grads):
            p.grad = g.clone()
        kw = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[kind]
        opts[kind] = (torch.optim.Adam(params, lr=1e-3, betas=(0.0, 0.999), **kw), params)
    rb = TensorRollback([F], [r.opt_fake])

    def clone_copy():  # what the Refiner did before: a fresh copy of every tensor, every step
        [t.detach().clone() for t in F.state_dict().values()]
        {p: {k: v.clone() for k, v in st.items()} for p, st in r.opt_fake.state.items()}
    fns = {
        "teacher forward, no_grad": teacher(T, x, torch.no_grad),
        "teacher forward, inference_mode": teacher(T, x, torch.inference_mode),
        "teacher forward, channels_last": teacher(T_cl, x_cl, torch.no_grad),
        "fake-score forward+backward": fake_step(F, x),
        "fake-score forward+backward, channels_last": fake_step(F_cl, x_cl),
        "fake-score Adam, for-loop (PyTorch's CPU default)": lambda: opts["for-loop"][0].step(),
        "fake-score Adam, foreach": lambda: opts["foreach"][0].step(),
        "fake-score Adam, fused": lambda: opts["fused"][0].step(),
        "fake-score copy for the rollback, clone (before)": clone_copy,
        "fake-score copy for the rollback, preallocated": rb.snapshot,
    }
    med, _ = interleaved(fns, repeats, device)
    # Which Adam implementations give the for-loop's numbers exactly (from one state, one step).
    same = {}
    for kind, (opt, params) in opts.items():
        same[kind] = [p.detach().clone() for p in params]
    bit = {k: all(torch.equal(a, b) for a, b in zip(v, same["for-loop"])) for k, v in same.items()}
    lines = [f"Single levers, digits, batch {batch}, {device}, {torch.get_num_threads()} thread(s), "
             f"median of {repeats} interleaved calls", "", "| what | ms |", "|---|---|"]
    for k, v in med.items():
        note = ""
        if "Adam" in k:
            kind = k.rsplit(", ", 1)[1].split(" ")[0]
            note = " (same numbers as the for-loop)" if bit.get(kind) else " (not bit-identical)"
        lines.append(f"| {k}{note} | {1000 * v:.1f} |")
    log("\n".join(lines) + "\n")
    return {k: 1000 * v for k, v in med.items()}


# ---------------------------------------------------------------------------- memory

MEMORY_CONFIGS = {
    "official loop": {},
    "Refiner, official order": dict(update_order="official"),
    "Refiner, single-forward": dict(update_order="single-forward"),
    "Refiner, single-forward, teacher mode train": dict(update_order="single-forward", teacher_mode="train"),
    "Refiner, single-forward, checkpointing all": dict(update_order="single-forward", activation_checkpointing="all"),
    "Refiner, official order, checkpointing all": dict(update_order="official", activation_checkpointing="all"),
}


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss():
    """Current RSS in bytes, with the kernel's peak-RSS mark reset to it where Linux allows
    (/proc/self/clear_refs), so that building the networks does not count as the steps' peak.
    Returns (current bytes, whether the mark was reset)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS") * 1024, True
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, False


def _peak_rss(reset):
    if reset:
        return _status_kib("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def memory_child(pair, config, batch, device):
    """Runs in a fresh process: peak memory growth over three steps of one configuration."""
    gen_data, teacher_data = load_pair(pair)
    if config == "official loop":
        loop = OfficialLoop(gen_data, teacher_data, batch, device)
        step = loop.step
    else:
        step = make_refiner(gen_data, teacher_data, batch, device, **MEMORY_CONFIGS[config]).step
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base, reset = torch.cuda.memory_allocated(device), None
    else:
        base, reset = _reset_peak_rss()
    for _ in range(3):
        step()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss(reset)
    return {"growth_bytes": peak - base, "peak_reset": reset}


def memory_table(pair, batches, device, threads, log, configs):
    rows = []
    for config in configs:
        row = {"config": config}
        for b in batches:
            if device.type == "cuda":  # the allocator's own peak: exact in this process too
                gc.collect()
                torch.cuda.empty_cache()
                row[b] = memory_child(pair, config, b, device)["growth_bytes"]
                continue
            cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", json.dumps([pair, config, b]),
                   "--device", str(device), "--threads", str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            row[b] = json.loads(out.stdout.strip().splitlines()[-1])["growth_bytes"]
        rows.append(row)
    lo, hi = batches[0], batches[-1]
    what = ("torch.cuda.max_memory_allocated over the allocation after building" if device.type == "cuda" else
            "growth of the peak RSS (VmHWM, reset after building the networks), a fresh process each")
    lines = [f"Peak memory over 3 steps ({what}), {pair}, {device}", "",
             "| loop | " + " | ".join(f"batch {b}: MiB (MiB / image)" for b in batches) +
             f" | marginal MiB / image ({lo} to {hi}) |", "|---" * (len(batches) + 2) + "|"]
    for r in rows:
        cells = [f"{r[b] / 2 ** 20:.0f} ({r[b] / 2 ** 20 / b:.2f})" for b in batches]
        marginal = (r[hi] - r[lo]) / (hi - lo) / 2 ** 20
        lines.append(f"| {r['config']} | " + " | ".join(cells) + f" | {marginal:.2f} |")
    log("\n".join(lines) + "\n")
    return rows


# ---------------------------------------------------------------------------- main

def cuda_part(args, device, results, log, save):
    """Everything on the GPU, in the order that matters if the run is cut short: the gradient
    checks, both pairs at two batches, the batch and memory tables, then the compiled variants
    (CUDA graphs through torch.compile's 'reduce-overhead' mode)."""
    t_start = time.time()
    modes = [m for m in args.compile_modes.split(",") if m]
    for name in ("recompile_limit", "cache_size_limit"):  # several Refiners compile the same classes
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    pairs = {name: load_pair(name) for name in args.cuda_pairs.split(",")}
    batches = {"digits": [int(b) for b in args.cuda_batches.split(",")], "cifar": [args.cuda_cifar_batch]}
    sections = set(args.cuda_sections.split(","))
    for pair, (gen_data, teacher_data) in pairs.items():
        for mode in ("eval", "train") if "check" in sections else ():
            # cuDNN's default backward-weight algorithms may sum in another order on each call,
            # and TF32 turns the loops' last-bit differences into 1e-3 ones.
            with tf32_off(deterministic=True):
                check = check_same_gradients(gen_data, teacher_data, 4 if pair == "cifar" else args.batch,
                                             device, mode)
            log(f"Same gradients on {device}, {pair}, teacher mode {mode} (relative max difference, "
                f"Refiner's reference order vs official loop, deterministic cuDNN, no TF32): " +
                ", ".join(f"{k} {v:.1e}" for k, v in check.items()) + "\n")
            results.setdefault("checks", []).append(dict(pair=pair, device=str(device), teacher_mode=mode, **check))
            if max(v for k, v in check.items() if not k.startswith("control")) > 1e-3:
                raise SystemExit(f"the Refiner's reference order and the official loop disagree on {device}")
        save()
    for pair, (gen_data, teacher_data) in pairs.items() if "tables" in sections else ():
        for b in batches[pair]:
            for mode in ("eval", "train"):
                results["tables"].append(speed_table(pair, gen_data, teacher_data, b, device, args.repeats,
                                                     mode, args, log, compile_modes=[]))
                save()
    gen_data, teacher_data = pairs.get("digits", (None, None))
    if "batch" in sections and gen_data is not None:
        results["batch_table_cuda"] = batch_table(gen_data, teacher_data, [int(b) for b in args.batches.split(",")],
                                                  device, args.repeats, log)
        save()
    if "memory" in sections and not args.no_memory:
        mb = [int(b) for b in args.memory_batches.split(",")]
        results["memory_cuda"] = memory_table("digits", mb, device, 1, log, list(MEMORY_CONFIGS))
        save()
    for pair in pairs if "compiled" in sections else ():
        for mode in modes:
            if time.time() - t_start > args.cuda_budget:
                log(f"(compiled {pair} / {mode} skipped: past --cuda-budget {args.cuda_budget:.0f} s)\n")
                continue
            gen_data, teacher_data = pairs[pair]
            t = speed_table(pair, gen_data, teacher_data, batches[pair][0], device, args.repeats, "eval", args,
                            log, compile_modes=[mode])
            results["tables"].append(t)
            save()
            torch._dynamo.reset()


def digits_part(args, threads, device, cpu, results, log):
    torch.set_num_threads(threads[0])
    gen_data, teacher_data = load_pair("digits")
    for mode in ("eval", "train"):
        check = check_same_gradients(gen_data, teacher_data, args.batch, cpu, mode)
        log(f"Same gradients, digits, batch {args.batch}, teacher mode {mode} (relative max difference, "
            f"Refiner's reference order vs official loop): " +
            ", ".join(f"{k} {v:.1e}" for k, v in check.items()) + "\n")
        results.setdefault("checks", []).append(dict(pair="digits", teacher_mode=mode, **check))
        ok = max(v for k, v in check.items() if not k.startswith("control")) < 1e-5
        if not ok or check["control: next step's generator gradient"] < 1e-2:
            raise SystemExit("the Refiner's reference order and the official loop disagree: no timing")

    for n in threads:
        torch.set_num_threads(n)
        for mode in ("eval", "train"):
            results["tables"].append(speed_table("digits", gen_data, teacher_data, args.batch, cpu,
                                                 args.repeats, mode, args, log))
    if device.type == "cuda":
        for mode in ("eval", "train"):
            results["tables"].append(speed_table("digits", gen_data, teacher_data, args.batch, device,
                                                 args.repeats, mode, args, log))
    torch.set_num_threads(threads[0])
    results["levers"] = levers_table(gen_data, teacher_data, args.batch, cpu, args.repeats, log)
    batches = [int(b) for b in args.batches.split(",")]
    results["batch_table"] = batch_table(gen_data, teacher_data, batches, cpu, max(3, args.repeats // 3), log)
    if not args.no_memory:
        mb = [int(b) for b in args.memory_batches.split(",")]
        results["memory"] = memory_table("digits", mb, cpu, threads[0], log, list(MEMORY_CONFIGS))
        if device.type == "cuda":
            results["memory_cuda"] = memory_table("digits", mb, device, threads[0], log, list(MEMORY_CONFIGS))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="CPU thread counts to time")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", default="8,16,32,64,128", help="batches of the time-vs-batch table (CPU)")
    ap.add_argument("--memory-batches", default="32,128")
    ap.add_argument("--cifar", action="store_true", help="also the CIFAR-10-size fixtures (seconds per step)")
    ap.add_argument("--no-digits", action="store_true", help="skip the digits part (with --cifar)")
    ap.add_argument("--cifar-batch", type=int, default=4)
    ap.add_argument("--cifar-repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time the Refiner with compile=True")
    ap.add_argument("--cuda-only", action="store_true", help="time on the GPU only (the CPU tables skipped)")
    ap.add_argument("--cuda-batches", default="32,128", help="digits batches of the GPU speed tables")
    ap.add_argument("--cuda-cifar-batch", type=int, default=32)
    ap.add_argument("--cuda-pairs", default="digits,cifar")
    ap.add_argument("--cuda-sections", default="check,tables,batch,memory,compiled",
                    help="which parts of --cuda-only to run")
    ap.add_argument("--compile-modes", default="default,reduce-overhead",
                    help="torch.compile modes timed last in --cuda-only ('' for none)")
    ap.add_argument("--cuda-budget", type=float, default=420,
                    help="seconds after which --cuda-only skips the compiled variants not yet started")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="few repeats, one thread, small tables: a smoke run")
    ap.add_argument("--out", default=None, help="write <out>.md and <out>.json")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        torch.set_num_threads(int(args.threads.split(",")[0]))
        pair, config, b = json.loads(args.memory_child)
        print(json.dumps(memory_child(pair, config, b, torch.device(args.device))))
        return
    if args.quick:
        args.threads, args.repeats, args.batches, args.memory_batches = "1", 3, "8,32", "8,32"
        args.cifar_repeats = 1
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cpu = torch.device("cpu")
    threads = [int(t) for t in args.threads.split(",")]
    report, results = [], {"tables": []}

    def log(text):
        print(text, flush=True)
        report.append(text)
    t_all = time.time()
    log(f"Machine: {platform.machine()} CPU, {cpu_model()} ({os.cpu_count()} cores)"
        f"{', ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}; torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d')}; command: {' '.join(sys.argv)}\n")

    def save():
        if args.out:
            atomic_write_text(args.out + ".md", "\n".join(report) + "\n")
            atomic_write_text(args.out + ".json", json.dumps(results, indent=1, default=str))
    if args.cuda_only:
        if device.type != "cuda":
            raise SystemExit("--cuda-only needs a CUDA device")
        log(f"GPU: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}; cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
            f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32} (torch's defaults)\n")
        cuda_part(args, device, results, log, save)
        log(f"Total: {time.time() - t_all:.0f} s")
        save()
        return
    if not args.no_digits:
        digits_part(args, threads, device, cpu, results, log)
    if args.cifar:
        gen_data, teacher_data = load_pair("cifar")
        b = args.cifar_batch
        for mode in ("eval", "train"):
            check = check_same_gradients(gen_data, teacher_data, 2, cpu, mode)
            log(f"Same gradients, CIFAR-10-size fixtures, batch 2, teacher mode {mode}: " +
                ", ".join(f"{k} {v:.1e}" for k, v in check.items()) + "\n")
            results.setdefault("checks", []).append(dict(pair="cifar", teacher_mode=mode, **check))
        for n in threads:
            torch.set_num_threads(n)
            for mode in ("eval", "train"):
                results["tables"].append(speed_table("cifar", gen_data, teacher_data, b, cpu,
                                                     args.cifar_repeats, mode, args, log))
        if device.type == "cuda":
            for mode in ("eval", "train"):
                results["tables"].append(speed_table("cifar", gen_data, teacher_data, 32, device,
                                                     args.repeats, mode, args, log))
    log(f"Total: {time.time() - t_all:.0f} s")
    save()


if __name__ == "__main__":
    main()
