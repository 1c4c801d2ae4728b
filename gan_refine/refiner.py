"""The Refiner: Diff-Instruct refinement of a GAN generator against a diffusion teacher.

    from gan_refine.refiner import Refiner
    r = Refiner(G, teacher, batch=64)       # G: pickle dict, adapter or nn.Module (+ z_dim=...)
    for stats in r.iterate(100):            # or r.run(kimg=10)
        print(stats["loss/generator"])
    G_refined = r.refined_generator()        # the user's own module class, refined weights
    r.export_pickle("refined.pkl")           # the original pickle layout

Networks (docs/design.md, "The method"): the teacher D_T (frozen); the fake score D_phi, a copy of the teacher
trained on generator samples; the generator G, started from the given (G_ema) weights, and
its EMA. The user's objects are not modified, except that the teacher is moved to the device,
put in eval mode and frozen.

On several processes (torchrun, or `process_group=`), `batch` stays the global batch: every
rank draws the random numbers of the whole batch and keeps its slice, DistributedDataParallel
averages the gradients, and the EMA lives on rank 0 (`sync_ema()` copies it to every rank).
"""

import concurrent.futures
import contextlib
import copy
import math
import time

import torch

from . import distributed, losses
from .acceleration import CHECKPOINT_PARTS, CompiledForward, checkpointed_blocks, compile_mode, mode_uses_cudagraphs
from .config import METHOD_FIELDS_RESUMABLE, RefineConfig
from .fake_augment import resolve_augment
from .rollback import TensorRollback
from .sigma import bin_index, bin_labels, make_sigma_law
from .snapshot import capture_global_rng, restore_global_rng

__all__ = ["Refiner", "refine", "NonFiniteError", "NonFiniteWeightsError", "resolve_device", "steps_for_kimg"]


def steps_for_kimg(kimg, batch):
    """Generator updates needed to show `kimg` thousand images at `batch` images per update."""
    return max(1, math.ceil(kimg * 1000 / batch - 1e-9))


class NonFiniteError(RuntimeError):
    """A network produced NaN/inf. Raised before the generator (or its EMA) is changed by the
    bad values, with the fake score's updates of that step undone: the refiner is left exactly
    as it was before the step."""


def resolve_device(device="auto"):
    """'auto' -> CUDA when available, else CPU. Never assumes a GPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but no CUDA device is available; "
                         f"use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


@contextlib.contextmanager
def _global_rng_scope(seed, device):
    """Run a block with torch's global RNGs seeded from `seed`, restoring them afterwards.

    Dropout and StyleGAN's per-layer noise draw from the global generators; seeding them from
    the refiner's own generator makes every step reproducible without disturbing the caller.
    """
    devices = [device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


class _SharedDropout:
    """Calls a network with the global RNGs reseeded to one value, so two networks with the
    same architecture (teacher and its copy) draw the same dropout masks."""

    def __init__(self, net, seed, device):
        self.net, self.seed, self.device = net, seed, device

    def __call__(self, x, sigma, c):
        with _global_rng_scope(self.seed, self.device):
            return self.net(x, sigma, c)


class NonFiniteWeightsError(ValueError):
    """An input network (`what`: 'generator' or 'teacher') holds NaN/inf weights."""

    def __init__(self, message, what):
        super().__init__(message)
        self.what = what


def _check_finite_weights(net, what):
    """NaN/inf weights in an input network: say so now, not as a failed first step."""
    if not isinstance(net, torch.nn.Module):
        return
    bad = total = 0
    for t in net.state_dict().values():
        if torch.is_floating_point(t):
            total += t.numel()
            bad += int((~torch.isfinite(t)).sum())
    if bad:
        raise NonFiniteWeightsError(f"the {what}'s weights hold NaN/inf ({bad} of {total} values): the "
                                    f"pickle is damaged or was saved after its training diverged; use "
                                    f"another snapshot", what)


def _adam(params, **kw):
    """Adam, fused when asked for and the parameters allow it (else PyTorch's default)."""
    if kw.get("fused"):
        try:
            return torch.optim.Adam(params, **kw)
        except (RuntimeError, ValueError, TypeError):
            kw = dict(kw, fused=None)
    return torch.optim.Adam(params, **kw)


def _total_norm(params):
    """The L2 norm of all gradients together, as clip_grad_norm_ computes it."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros([], device=params[0].device)
    get = getattr(torch.nn.utils, "get_total_norm", None)
    if get is not None:
        return get(grads)
    return torch.nn.utils.clip_grad_norm_(params, math.inf)


def _checkpoint_parts(parts):
    """activation_checkpointing= as a set of CHECKPOINT_PARTS ('all', one name, or several)."""
    if parts in (None, False, "none", ""):
        return frozenset()
    if isinstance(parts, str):
        parts = CHECKPOINT_PARTS if parts == "all" else [parts]
    parts = frozenset(parts)
    unknown = sorted(parts - set(CHECKPOINT_PARTS))
    if unknown:
        raise ValueError(f"activation_checkpointing: unknown part(s) {', '.join(unknown)}; use "
                         f"{', '.join(CHECKPOINT_PARTS)} or 'all'")
    return parts


class _Checks:
    """The NaN/inf checks of one step, kept on the device until the step reads them all at once
    (with its statistics), so checking costs no synchronisation of its own."""

    def __init__(self):
        self.flags, self.labels = [], []

    def extend(self, other):
        self.flags += other.flags
        self.labels += other.labels

    def add(self, t, what, updated):
        """`what`: how the message names the tensor; `updated`: whether any optimiser step had
        been taken before this value was computed (it decides whom the message blames)."""
        self.flags.append(torch.isfinite(t).all().logical_not())
        self.labels.append((what, updated))

    def first_bad(self, flags):
        """The label of the first check that failed (flags: host values, as many as checks)."""
        for (what, updated), bad in zip(self.labels, flags):
            if bad:
                return what, updated
        return None


@torch.no_grad()
def autocast_refusal(net, device, dtype):
    """None if a generator or teacher adapter runs a two-sample batch under torch.autocast to
    `dtype` on `device`, else why not (a phrase). StyleGAN's and EDM's networks check their
    layers' dtypes (each layer must return the dtype it was given) and autocast breaks that."""
    labels = torch.zeros([2], dtype=torch.long, device=device)  # class 0, where there are classes
    try:
        # The generator's noise inputs draw from the global generator: leave the caller's stream be.
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.autocast(device_type=device.type, dtype=dtype):
            if hasattr(net, "z_dim"):
                net(torch.zeros([2, net.z_dim], device=device), labels if net.c_dim else None)
            else:
                r = net.img_resolution
                net(torch.zeros([2, net.img_channels, r, r], device=device), torch.ones([2], device=device),
                    labels if net.label_dim else None)
    except AssertionError:
        return "its code asserts its layers' dtypes, which autocast changes"
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        return lines[0] if lines else type(err).__name__
    return None


def _adapt_generator(obj, gen_key, kw):
    from .adapters import as_generator
    return as_generator(obj, which=gen_key, **kw)


def _adapt_teacher(obj, kw):
    from .adapters import as_teacher
    return as_teacher(obj, **kw)


class Refiner:
    """Diff-Instruct refinement state and one `step()` = fake-score update(s) + generator update.

    Args:
        generator: a StyleGAN network-pickle dict, a GeneratorAdapter, or an nn.Module (pass
            generator_kwargs such as dict(z_dim=..., img_resolution=...) for a generic one).
        teacher: an EDM network-pickle dict, a TeacherAdapter, or a callable denoiser
            (x, sigma, c) -> x0 (teacher_kwargs describe a generic one).
        config: a RefineConfig; keyword overrides (batch=..., lr_gen=...) are applied on top.
        fake_score: optional initial fake score (default: a copy of the teacher).
        generator_loss: optional replacement for the generator loss, with the signature of
            losses.ikl_generator_loss minus its options (for experiments and control runs).
        gen_key: which generator of a pickle dict to start from.
        process_group: an initialised torch.distributed group to refine on (every rank builds
            its Refiner with the same arguments); default: the default group if one is
            initialised, else this process alone.
        compile: call the networks through torch.compile (inductor; CPU needs a C++ compiler):
            True (torch.compile's default mode) or a mode name: 'reduce-overhead' replays each
            compiled graph as a CUDA graph (on CUDA; the StyleGAN ops take their reference
            path inside compiled graphs, which inductor fuses). Each network compiles on first
            use in each mode it meets, which takes minutes for a 55M-parameter UNet on CPU; a
            network that fails to compile runs uncompiled, with a warning. Not used on several
            processes. Speed figures: docs/benchmarks.md.
        activation_checkpointing: networks whose activations are recomputed in the backward
            pass instead of being kept, for batches that do not fit: any of 'generator',
            'fake-score', 'teacher' (used with gradients by --loss sid only), or 'all'. The
            results are the same bit for bit; a step costs about one more forward of each.
        config.overlap: with update_order='single-forward', run part of the fake score's
            update on a second CPU thread. With teacher_mode 'eval' the worker runs the fake
            score's training forward and backward while this thread runs the teacher's forward,
            the fake score's eval forward and the generator's backward; with teacher_mode
            'train' (one fake-score forward for both losses) the worker runs the fake score's
            backward while this thread runs the teacher's forward and the generator's backward.
            The results are the same bit for bit as without it (only one thread draws random
            numbers meanwhile); the overlapped part takes the longer of its two branches
            instead of their sum. Used where that holds: one process on CPU, the IKL loss, no
            data term, no --augment with teacher_mode 'train', not compiled, no activation
            checkpointing (elsewhere the step runs as without it; `overlap_active` says
            which). Each branch gets half of torch's intra-op threads during the overlapped
            part, at least one: with one thread, overlap
            uses a second core. Speed figures: docs/benchmarks.md, "Step speed".
        augment_pipe: with config.augment > 0, the teacher's augmentation pipe (images ->
            (images, augment labels)) when `teacher` is not the pickle dict that holds it.
        data: with config.data_weight > 0, the real training images of the data term: a path
            (image folder, dataset zip, .npy/.npz), a tensor [N, C, H, W] in [-1, 1] or an
            (images, labels) pair, or an object with sample(n, generator, device).
    """

    def __init__(self, generator, teacher, config=None, *, fake_score=None, generator_loss=None,
                 gen_key="G_ema", generator_kwargs=None, teacher_kwargs=None, process_group=None,
                 dist=None, compile=False, activation_checkpointing=(), augment_pipe=None, data=None,
                 **overrides):
        cfg = config if config is not None else RefineConfig()
        if overrides:
            cfg = cfg.replace(**overrides)
        cfg.validate()
        if cfg.update_order not in RefineConfig.UPDATE_ORDERS:
            raise ValueError(f"update_order must be one of {', '.join(RefineConfig.UPDATE_ORDERS)}, "
                             f"got {cfg.update_order!r}")
        self.checkpointing = _checkpoint_parts(activation_checkpointing)
        mode = compile_mode(compile)
        if mode and self.checkpointing:
            raise ValueError("compile and activation_checkpointing do not combine; choose one")
        self.config = cfg
        self.dist = dist if dist is not None else distributed.from_group(process_group)
        world = self.dist.world_size
        if cfg.batch % world:
            raise ValueError(f"batch {cfg.batch} is the global batch, split evenly over {world} "
                             f"processes; use a multiple of {world}")
        self.local_batch = cfg.batch // world
        self.device = resolve_device(cfg.device)
        if cfg.precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"precision {cfg.precision!r} needs a CUDA device; on "
                             f"{self.device.type} use fp32")
        self.base = generator if isinstance(generator, dict) else None
        self.gen_key = gen_key
        from .adapters import check_compatible
        gen = _adapt_generator(generator, gen_key, generator_kwargs or {})
        teacher_arg = teacher
        teacher = _adapt_teacher(teacher, teacher_kwargs or {})
        check_compatible(gen, teacher)
        for net, what in ((gen, "generator"), (teacher, "teacher")):
            _check_finite_weights(net, what)

        # Our own copies: the user's generator stays as it was.
        self.G = copy.deepcopy(gen).to(self.device)
        if cfg.force_fp32:  # before the EMA and fake-score copies, which inherit the switch
            from .adapters import force_fp32
            force_fp32(self.G)
            force_fp32(teacher)
        self.G.train().requires_grad_(False)
        self._g_params = list(self.G.trainable_parameters())
        if not self._g_params:
            raise ValueError("the generator has no trainable parameters")
        for p in self._g_params:
            p.requires_grad_(True)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        if cfg.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
            for net, what in ((self.G, "generator"), (self.teacher, "teacher")):
                why = autocast_refusal(net, self.device, dtype)
                if why is not None:
                    raise ValueError(f"precision {cfg.precision!r} runs the networks under torch.autocast, "
                                     f"and the {what} refuses it ({why}); use tf32 or fp32 (a StyleGAN "
                                     f"generator's own fp16 layers stay on unless force_fp32)")
        if fake_score is None:
            fake = copy.deepcopy(self.teacher)
        else:
            fake = _adapt_teacher(fake_score, teacher_kwargs or {})
        self.fake_score = fake.to(self.device)
        if augment_pipe is None and isinstance(teacher_arg, dict):
            augment_pipe = teacher_arg.get("augment_pipe")
        # Before the optimiser and DDP see the fake score: ours may gain an augment-label input.
        self.augment_pipe = resolve_augment(cfg.augment, self.fake_score, augment_pipe)
        if isinstance(self.augment_pipe, torch.nn.Module):
            self.augment_pipe.to(self.device)
        self.fake_score.requires_grad_(True)
        self.adv_head, self.data = self._setup_data_term(data)
        self._f_params = [p for p in self.fake_score.parameters()]
        if self.adv_head is not None:   # trained with the fake score, by its optimiser
            self._f_params += list(self.adv_head.parameters())
        if not self._f_params:
            raise ValueError("the fake score has no trainable parameters (the teacher is a plain "
                             "function?): pass fake_score= an nn.Module denoiser to train")
        self.sigma_data = float(self.teacher.sigma_data)

        adam = dict(betas=cfg.betas, eps=cfg.adam_eps)
        if cfg.update_order == "official":
            # PyTorch's multi-tensor Adam (its default on CUDA, not on CPU): on CPU the same
            # numbers as the per-tensor loop, bit for bit, and 1.5x faster (docs/benchmarks.md).
            adam["foreach"] = True
        else:
            # Adam's fused kernel: the same update up to rounding, 4x faster than the loop on CPU.
            adam["fused"] = True
        self.opt_G = _adam(self._generator_groups(), lr=cfg.lr_gen, **adam)
        self.opt_fake = _adam(self._f_params, lr=cfg.lr_fake, **adam)
        fp16 = cfg.precision == "fp16"
        self.scaler_G = torch.amp.GradScaler("cuda") if fp16 else None
        self.scaler_fake = torch.amp.GradScaler("cuda") if fp16 else None
        # Networks the optimisers update, called through DDP on several processes so that
        # their gradients are averaged over ranks during the backward pass.
        self._G_train, self._fake_train = self.G, self.fake_score
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            import inspect
            # find_unused_parameters: EDM teachers carry an augmentation-label mapping that
            # refinement never feeds, so some fake-score parameters get no gradient.
            kw = dict(device_ids=[self.device.index] if self.device.type == "cuda" else None,
                      process_group=self.dist.group, find_unused_parameters=True)
            # Buffers are the same on every rank: no need to re-send them at each forward.
            newer = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
            kw["forward_sync_buffers" if newer else "broadcast_buffers"] = False
            self._G_train = DDP(self.G, **kw)
            self._fake_train = DDP(self.fake_score, **kw)

        self.compile_mode = None if self.dist.enabled else mode  # None: the networks run eagerly
        self._compiled = {}
        if mode and self.dist.enabled:
            import warnings
            warnings.warn("compile is not used on several processes (the per-rank random draws "
                          "are not traceable); running uncompiled", RuntimeWarning, stacklevel=2)
        # The fake score's updates of a step are undone from here when the step meets NaN/inf.
        self._fake_rollback = TensorRollback([self.fake_score] + ([self.adv_head] if self.adv_head is not None else []),
                                             [self.opt_fake])
        self._fake_snapshot_taken = False

        self.sigma_law = make_sigma_law(cfg.sigma_law, P_mean=cfg.P_mean, P_std=cfg.P_std,
                                        sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max,
                                        rho=cfg.rho, t_max=cfg.t_max)
        self._custom_loss = generator_loss
        self.overlap = bool(cfg.overlap)
        self._worker = None       # the second thread of overlap=True, started on first use
        self._fake_twin = None    # (fake score, its eval-mode twin sharing its tensors)
        self._bin_names = bin_labels(cfg.gap_bins)
        self.rng = torch.Generator(device=self.device).manual_seed(int(cfg.seed))
        self.cur_step = 0
        self.cur_nimg = 0
        self._updated = False  # has any optimiser step been taken (for NaN messages)?
        self._extra = {}

    def _setup_data_term(self, data):
        """The discriminator head and the real images of the data term, or (None, None)."""
        cfg = self.config
        if cfg.data_weight <= 0:
            return None, None
        from . import adversarial
        if data is None:
            raise adversarial.DataTermError("data_weight > 0 needs the real training images (data=, "
                                            "or --data PATH)")
        if self.dist.enabled:
            raise adversarial.DataTermError("the data term (--data-weight > 0) runs on one process only "
                                            "for now; run without torchrun, or with --data-weight 0")
        G = self.G
        data = adversarial.as_data(data, G.img_resolution, G.img_channels, G.c_dim)
        self._adv_features = adversarial.EncoderFeatures(self.fake_score)
        width, res = self._adv_features.shape(G.img_channels, G.img_resolution, G.c_dim, self.device)
        with torch.random.fork_rng(devices=[]):   # the head's init leaves the global stream alone
            torch.manual_seed(int(cfg.seed) + 7919)
            head = adversarial.DiscriminatorHead(width, res).to(self.device)
        return head, data

    def _discriminator_loss(self, x0, c):
        """The head's loss on noised real images against noised (detached) generator samples,
        through the fake score's encoder (fake_score in train mode, inside the step's RNG scope)."""
        from .adversarial import discriminator_terms
        gen = torch.Generator().manual_seed(self._draw_seed())
        real, real_c = self.data.sample(x0.shape[0], generator=gen, device=self.device)
        if not self.G.c_dim:
            real_c = None
        sig_r, noise_r = self._noise(real)
        sig_f, noise_f = self._noise(x0)
        f_real = self._adv_features(real + losses._expand(sig_r, real) * noise_r, sig_r, real_c)
        f_fake = self._adv_features(x0.detach() + losses._expand(sig_f, x0) * noise_f, sig_f, c)
        real_t, fake_t = discriminator_terms(self.adv_head, f_real, f_fake)
        return real_t.mean() + fake_t.mean()

    @staticmethod
    def _data_scale(x0):
        """Values per image: the data term's weights are per pixel, as DMD2's (whose losses are
        means over pixels, where the IKL and denoising losses here are sums)."""
        return float(x0[0].numel())

    def _generator_adv_terms(self, x0, c):
        """Per-sample GAN loss of the generator through the head (the fake score in train mode,
        as the head is trained; no parameter but the generator's receives gradients)."""
        from .adversarial import frozen, generator_terms
        sigma, noise = self._noise(x0)
        was = self.fake_score.training
        self.fake_score.train()
        try:
            with frozen(self.adv_head), frozen(self.fake_score):
                f = self._adv_features(x0 + losses._expand(sigma, x0) * noise, sigma, c)
                return generator_terms(self.adv_head, f)
        finally:
            self.fake_score.train(was)

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _precision_flags(self):
        """TF32 on for 'tf32' and off for every other precision (fp32 means fp32), for the
        duration of a block only: the refiner runs inside other people's programs."""
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        allow = self.config.precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    def _randomness(self):
        """Per-sample random draws inside the networks (StyleGAN noise, dropout) as a single
        process running the whole batch would make them; nothing to do on one process."""
        if not self.dist.enabled:
            return contextlib.nullcontext()
        return distributed.GlobalBatchRandomness(self.local_batch, self.dist.world_size, self.dist.rank)

    def _mine(self, t):
        """This rank's slice of a tensor drawn for the global batch."""
        if not self.dist.enabled:
            return t
        start = self.local_batch * self.dist.rank
        return t[start:start + self.local_batch]

    def _autocast(self):
        if self.config.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
            return torch.autocast(device_type="cuda", dtype=dtype)
        return contextlib.nullcontext()

    def _draw_seed(self):
        return int(torch.randint(0, 2 ** 62, [1], generator=self.rng, device=self.device).item())

    def _draw_seeds(self, n):
        """n seeds in one draw and one transfer (the official order draws them one by one, in
        the places its random stream has them)."""
        return torch.randint(0, 2 ** 62, [n], generator=self.rng, device=self.device).tolist()

    def _latents(self):
        # Drawn for the global batch on every rank, so the run does not depend on world size.
        z, c = self.G.sample_latents(self.config.batch, generator=self.rng, device=self.device,
                                     label_probs=self.config.label_probs)
        return self._mine(z), self._mine(c)

    def _noise(self, x0):
        n = self.config.batch
        sigma = self.sigma_law.sample(n, generator=self.rng, device=self.device)
        noise = torch.randn([n, *x0.shape[1:]], generator=self.rng, device=self.device, dtype=x0.dtype)
        return self._mine(sigma), self._mine(noise)

    def _blame(self, updated):
        if not updated:
            return ("this happened before the first update, so the input networks make it: check "
                    "that the generator and teacher pickles hold finite weights (the refiner "
                    "state is unchanged)")
        return ("the refiner was left as it was before this step (lower the learning rate, use "
                "fp32, or add --grad-clip)")

    def _backward(self, loss, opt, params, scaler, checks, what):
        """Back-propagate into `params` only and clip; returns the pre-clip gradient norm, as a
        device tensor (checked with the step's other values, not here)."""
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward(inputs=params)
            scaler.unscale_(opt)
        else:
            loss.backward(inputs=params)
        if self.config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        else:  # the norm alone: clipping at inf would still multiply every gradient by 1
            norm = _total_norm(params)
        if scaler is None:
            # With loss scaling an overflow only skips the update (scaler.step): not an error.
            # After DDP's averaging every rank holds the same gradient, so they agree here.
            checks.add(norm, f"the {what} gradient", self._updated)
        return norm.detach()

    def _optimizer_step(self, opt, scaler):
        if scaler is not None:
            scaler.step(opt)  # skips the update itself when the scaled gradients overflowed
            scaler.update()
        else:
            opt.step()
        self._updated = True

    @contextlib.contextmanager
    def _checkpointing(self, *parts):
        """Activation checkpointing of these networks' forwards, where asked for (a forward
        without gradients is never checkpointed)."""
        nets = {"generator": self.G, "fake-score": self.fake_score, "teacher": self.teacher}
        recompute = self._randomness if self.dist.enabled else None
        with contextlib.ExitStack() as stack:
            for part in parts:
                if part in self.checkpointing:
                    stack.enter_context(checkpointed_blocks(nets[part], recompute_context=recompute))
            yield

    def _generator_loss(self, fake, teacher, x0, sigma, noise, c):
        cfg = self.config
        if self._custom_loss is not None:
            return self._custom_loss(fake, teacher, x0, sigma, noise, c)
        if cfg.loss == "sid":
            return losses.sid_generator_loss(fake, teacher, x0, sigma, noise, c, alpha=cfg.sid_alpha)
        return losses.ikl_generator_loss(fake, teacher, x0, sigma, noise, c, normalize=cfg.normalize)

    @torch.no_grad()
    def _update_ema(self):
        if not self.dist.is_main:
            return  # the EMA is rank 0's; sync_ema() shares it when every rank needs it
        self.update_ema(self.G_ema, self.config.ema_rampup)

    @torch.no_grad()
    def update_ema(self, ema, rampup):
        """One EMA update of `ema` (a copy of G) towards G after cur_nimg images, with the
        configured half-life and the given ramp-up (the EDM training loop's formula); the
        refiner's own G_ema uses config.ema_rampup, and callers may keep more of them."""
        cfg = self.config
        ema_nimg = cfg.ema_kimg * 1000
        if rampup > 0:
            ema_nimg = min(ema_nimg, self.cur_nimg * rampup)
        beta = 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))
        for p_ema, p in zip(ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def _generator_groups(self):
        """The generator's parameters as Adam's groups: one, or with mapping_lr_mult != 1 the
        mapping network's (its `lr_scale` applied at each step) and the rest."""
        mult = self.config.mapping_lr_mult
        if mult == 1:
            return [dict(params=self._g_params)]
        mapping = getattr(getattr(self.G, "module", self.G), "mapping", None)
        ids = {id(p) for p in mapping.parameters()} if isinstance(mapping, torch.nn.Module) else set()
        mapped = [p for p in self._g_params if id(p) in ids]
        if not mapped:
            raise ValueError("mapping_lr_mult needs a generator with a trainable `mapping` network "
                             "(StyleGAN's); leave it at 1 for this generator")
        return [dict(params=[p for p in self._g_params if id(p) not in ids]),
                dict(params=mapped, lr_scale=float(mult))]

    # ------------------------------------------------------------------ the step

    def step(self):
        """One generator update (after `fake_updates` fake-score updates, plus `fake_warmup`
        before the very first one); returns statistics.

        A NonFiniteError leaves the refiner exactly as it was before the call: the fake score's
        updates of this step are undone, and the counters and random streams are rewound. The
        NaN/inf checks of the whole step are read in one transfer, with the statistics, before
        the generator's optimiser step.
        """
        start = dict(rng=self.rng.get_state(), updated=self._updated,
                     scaler=None if self.scaler_fake is None else copy.deepcopy(self.scaler_fake.state_dict()))
        self._fake_snapshot_taken = False
        if mode_uses_cudagraphs(self.compile_mode) and self.device.type == "cuda":
            # CUDA graphs reuse their output buffers: a new step may overwrite the last one's.
            torch.compiler.cudagraph_mark_step_begin()
        try:
            with self._precision_flags():
                return self._step()
        except NonFiniteError:
            self._undo(start)
            raise

    @torch.no_grad()
    def _undo(self, start):
        if self._fake_snapshot_taken:
            self._fake_rollback.restore()
        if start["scaler"] is not None:
            self.scaler_fake.load_state_dict(start["scaler"])
        self.rng.set_state(start["rng"])
        self._updated = start["updated"]
        self.opt_fake.zero_grad(set_to_none=True)
        self.opt_G.zero_grad(set_to_none=True)

    def _step(self):
        cfg = self.config
        t0 = time.perf_counter()
        checks = _Checks()
        self._extra = {}   # further per-step figures (device scalars), reported with the others
        warmup = cfg.fake_warmup if self.cur_step == 0 else 0
        if cfg.update_order == "official":
            fake = self._fake_updates(cfg.fake_updates + warmup, checks)
            gen, later = self._official_generator_update(checks), [(self.opt_G, self.scaler_G)]
        else:
            fake = self._fake_updates(cfg.fake_updates - 1 + warmup, checks)
            gen, joint = self._joint_update(checks)
            fake.append(joint)
            later = [(self.opt_G, self.scaler_G), (self.opt_fake, self.scaler_fake)]
        stats = self._gather_stats(gen, fake, checks)  # raises NonFiniteError before any update below
        lr_gen = self.lr_gen_now()
        for group in self.opt_G.param_groups:
            group["lr"] = lr_gen * group.get("lr_scale", 1.0)
        for opt, scaler in later:
            self._optimizer_step(opt, scaler)
        self.cur_step += 1
        self.cur_nimg += cfg.batch
        self._update_ema()
        dt = time.perf_counter() - t0  # on CUDA, work queued after the statistics counts in the next step
        stats.update({
            "lr/generator": lr_gen,
            "step": self.cur_step,
            "kimg": self.cur_nimg / 1000,
            "sec_per_step": dt,
            "images_per_sec": cfg.batch / dt if dt > 0 else float("inf"),
        })
        return stats

    def lr_gen_now(self):
        """The generator's learning rate for the update after cur_nimg images: lr_gen, halved every
        lr_gen_halflife_kimg thousand images when that is set, and scaled by min((cur_nimg +
        batch) / ramp, 1) over the first lr_rampup_kimg thousand (so the first update is not
        wasted at zero). A function of the counter only: a resumed run continues the same
        schedule."""
        cfg = self.config
        lr = cfg.lr_gen
        if cfg.lr_gen_halflife_kimg > 0:
            lr = lr * 0.5 ** (self.cur_nimg / (1000 * cfg.lr_gen_halflife_kimg))
        if cfg.lr_rampup_kimg > 0:
            lr = lr * min((self.cur_nimg + cfg.batch) / (1000 * cfg.lr_rampup_kimg), 1.0)
        return lr

    def _fake_updates(self, n, checks):
        """`n` fake-score updates, each on a fresh no-grad generator sample (docs/design.md,
        "The method", step 1); returns [(loss, mse, gradient norm)] as device tensors."""
        out = []
        for _ in range(n):
            if not self._fake_snapshot_taken:
                self._fake_rollback.snapshot()
                self._fake_snapshot_taken = True
            z, c = self._latents()
            with _global_rng_scope(self._draw_seed(), self.device):
                with torch.no_grad(), self._autocast(), self._randomness():
                    x0 = self._G_call(z, c).float()
                sigma, noise = self._noise(x0)
                checks.add(x0, "the generator output", self._updated)
                loss, figs, norm = self._fake_score_gradient(x0, sigma, noise, c, checks)
                self._optimizer_step(self.opt_fake, self.scaler_fake)
            out.append((loss, figs["fake_score/mse"].float().mean(), norm))
        return out

    def _fake_score_gradient(self, x0, sigma, noise, c, checks):
        """The fake score's denoising loss (plus the data term's head loss) on a detached
        sample, and its gradient; returns (loss, figures, gradient norm). The caller steps the
        optimiser."""
        self.fake_score.train()  # trained like its teacher was (dropout on)
        with self._autocast(), self._randomness(), self._checkpointing("fake-score"):
            per_sample, figs = losses.fake_score_loss(self._fake_call, x0, sigma, noise, c,
                                                      self.sigma_data, self.augment_pipe)
        loss = per_sample.float().mean()
        if self.adv_head is not None:
            d_loss = self._discriminator_loss(x0, c)
            self._extra["loss/discriminator"] = d_loss.detach()
            loss = loss + self._data_scale(x0) * self.config.data_d_weight * d_loss
        checks.add(loss, "the fake-score loss", self._updated)
        norm = self._backward(loss, self.opt_fake, self._f_params, self.scaler_fake, checks, "fake-score")
        return loss.detach(), figs, norm

    def _scores_for_generator(self, dropout_seed):
        """Fake score and teacher as the generator's loss calls them (in train mode, one shared
        dropout mask drawn from `dropout_seed`)."""
        if self.config.teacher_mode == "train":
            self.fake_score.train()
            self.teacher.train()
            return (_SharedDropout(self._fake_eval_call, dropout_seed, self.device),
                    _SharedDropout(self._teacher_call, dropout_seed, self.device))
        self.fake_score.eval()
        return self._fake_eval_call, self._teacher_call

    # The networks as the step calls them: the training wrappers, compiled on request (looked
    # up at each call, so a network replaced on the refiner is the one used).

    def _call(self, net, name):
        if self.compile_mode is None:
            return net
        compiled = self._compiled.get(name)
        if compiled is None or compiled.net is not net:
            compiled = self._compiled[name] = CompiledForward(net, name, mode=self.compile_mode)
        return compiled

    @property
    def _G_call(self):
        return self._call(self._G_train, "generator")

    @property
    def _fake_call(self):
        return self._call(self._fake_train, "fake score")

    @property
    def _teacher_call(self):
        return self._call(self.teacher, "teacher")

    @property
    def _fake_eval_call(self):
        """The fake score without its DDP wrapper: in the generator's loss no gradient reaches
        its parameters, so there is nothing to average."""
        return self._fake_call if self._fake_train is self.fake_score else self.fake_score

    def _generator_forward(self, z, c):
        self.G.train()
        with self._autocast(), self._randomness(), self._checkpointing("generator"):
            return self._G_call(z, c).float()

    def _official_generator_update(self, checks):
        """The generator's loss and gradient on a fresh sample (docs/design.md, "The method",
        step 2); its optimiser steps once the step's checks have been read."""
        z, c = self._latents()
        step_seed = self._draw_seed()
        self.fake_score.requires_grad_(False)
        try:
            with _global_rng_scope(step_seed, self.device):
                x0 = self._generator_forward(z, c)
                sigma, noise = self._noise(x0)
                dropout_seed = self._draw_seed() if self.config.teacher_mode == "train" else None
                draws = self.config.noise_draws
                x_in, c_in = x0, c
                if draws > 1:
                    # Each image again with further noise levels and noise (drawn after the
                    # first, so one draw leaves the random stream as the official loop has it);
                    # the rows of draw k are the batch's images in order.
                    more = [self._noise(x0) for _ in range(draws - 1)]
                    sigma = torch.cat([sigma] + [s for s, _ in more])
                    noise = torch.cat([noise] + [n for _, n in more])
                    x_in, c_in = torch.cat([x0] * draws), torch.cat([c] * draws)
                fake, teacher = self._scores_for_generator(dropout_seed)
                with self._autocast(), self._randomness(), self._checkpointing("teacher", "fake-score"):
                    per_sample, figs = self._generator_loss(fake, teacher, x_in, sigma, noise, c_in)
                if draws > 1:  # each image's mean over its draws
                    per_sample = per_sample.reshape(draws, -1).mean(0)
                if self.adv_head is not None:
                    adv = self._generator_adv_terms(x0, c)
                    self._extra["loss/generator_adv"] = adv.detach().mean()
                    per_sample = per_sample + self._data_scale(x0) * self.config.data_weight * adv
                loss = per_sample.float().mean()
                checks.add(x0, "the generator output", self._updated)
                checks.add(loss, "the generator loss", self._updated)
                norm = self._backward(loss, self.opt_G, self._g_params, self.scaler_G, checks, "generator")
        finally:
            self.teacher.eval()
            self.fake_score.requires_grad_(True)
        return dict(loss=loss.detach(), norm=norm, gap=figs.get("gap"), sigma=sigma)

    def _shares_fake_forward(self):
        """One fake-score forward serves the generator's gradient and the fake score's loss when
        both call it alike: the IKL loss with both scores in train mode (one dropout mask), and
        no augmentation of the fake score's images."""
        cfg = self.config
        return (self._custom_loss is None and cfg.loss == "ikl" and cfg.teacher_mode == "train"
                and self.augment_pipe is None and self.adv_head is None)

    def _joint_update(self, checks):
        """update_order='single-forward': one generator sample x0 (with gradients) serves the
        generator's loss and, detached, with the same sigma and noise, the fake score's loss;
        both gradients come from the networks as they were at the start of the step, and both
        optimisers step after the step's checks have been read."""
        z, c = self._latents()
        step_seed, dropout_seed = self._draw_seeds(2)
        try:
            with _global_rng_scope(step_seed, self.device):
                x0 = self._generator_forward(z, c)
                sigma, noise = self._noise(x0)
                if self._shares_fake_forward():
                    self.fake_score.train()
                    self.teacher.train()
                    fake = _SharedDropout(self._fake_call, dropout_seed, self.device)
                    teacher = _SharedDropout(self._teacher_call, dropout_seed, self.device)
                    with self._autocast(), self._randomness(), self._checkpointing("fake-score"):
                        x, d_fake, fake_ps, figs = losses.shared_fake_forward(fake, x0, sigma, noise, c,
                                                                               self.sigma_data)
                    fake_loss = fake_ps.float().mean()
                    checks.add(x0, "the generator output", self._updated)
                    checks.add(fake_loss, "the fake-score loss", self._updated)
                    threads = torch.get_num_threads()
                    branch = None
                    if self.overlap_active:
                        # The fake score's backward (no random draws) goes to the worker thread
                        # while this one calls the teacher, with its dropout mask, and runs the
                        # generator's backward: the two graphs share nothing.
                        half = max(1, threads // 2)
                        torch.set_num_threads(half)
                        branch = self._start_worker(self._fake_backward_branch, half, fake_loss)
                    try:
                        with self._autocast(), self._randomness():
                            gen_ps, gen_figs = losses.shared_ikl_terms(teacher, d_fake, x, x0, sigma, c,
                                                                       normalize=self.config.normalize)
                        figs.update(gen_figs)
                        gen_loss = gen_ps.float().mean()
                        checks.add(gen_loss, "the generator loss", self._updated)
                        g_norm = self._backward(gen_loss, self.opt_G, self._g_params, self.scaler_G, checks,
                                                "generator")
                    finally:
                        if branch is not None:
                            concurrent.futures.wait([branch])  # never leave the worker running
                            torch.set_num_threads(threads)
                    if branch is None:
                        f_norm = self._backward(fake_loss, self.opt_fake, self._f_params, self.scaler_fake,
                                                checks, "fake-score")
                    else:
                        fake_checks, f_norm = branch.result()
                        checks.extend(fake_checks)
                    fake_loss = fake_loss.detach()
                elif self.overlap_active:
                    # The fake score's branch goes to the worker thread, the one thread drawing
                    # random numbers (dropout) until it is joined; this thread calls the teacher
                    # and the eval-mode twin of the fake score (no dropout, no gradients).
                    threads = torch.get_num_threads()
                    half = max(1, threads // 2)  # the two branches share the intra-op threads
                    torch.set_num_threads(half)
                    branch = self._start_worker(self._fake_score_branch, half, x0.detach(), sigma, noise, c)
                    try:
                        with self._autocast():
                            gen_ps, figs = self._generator_loss(self._fake_eval_twin(), self._teacher_call,
                                                                x0, sigma, noise, c)
                        gen_loss = gen_ps.float().mean()
                        checks.add(x0, "the generator output", self._updated)
                        checks.add(gen_loss, "the generator loss", self._updated)
                        g_norm = self._backward(gen_loss, self.opt_G, self._g_params, self.scaler_G,
                                                checks, "generator")
                    finally:
                        concurrent.futures.wait([branch])  # never leave the worker running
                        torch.set_num_threads(threads)
                    fake_checks, (fake_loss, fake_figs, f_norm) = branch.result()
                    figs = dict(figs, **fake_figs)
                    checks.extend(fake_checks)
                else:
                    self.fake_score.requires_grad_(False)
                    try:
                        fake, teacher = self._scores_for_generator(dropout_seed)
                        with self._autocast(), self._randomness(), self._checkpointing("teacher", "fake-score"):
                            gen_ps, figs = self._generator_loss(fake, teacher, x0, sigma, noise, c)
                        if self.adv_head is not None:
                            adv = self._generator_adv_terms(x0, c)
                            self._extra["loss/generator_adv"] = adv.detach().mean()
                            gen_ps = gen_ps + self._data_scale(x0) * self.config.data_weight * adv
                    finally:
                        self.teacher.eval()
                        self.fake_score.requires_grad_(True)
                    gen_loss = gen_ps.float().mean()
                    checks.add(x0, "the generator output", self._updated)
                    checks.add(gen_loss, "the generator loss", self._updated)
                    # The generator's graph goes before the fake score's is built: a lower peak.
                    g_norm = self._backward(gen_loss, self.opt_G, self._g_params, self.scaler_G, checks,
                                            "generator")
                    fake_loss, fake_figs, f_norm = self._fake_score_gradient(x0.detach(), sigma, noise, c, checks)
                    figs = dict(figs, **fake_figs)
        finally:
            self.teacher.eval()
        gen = dict(loss=gen_loss.detach(), norm=g_norm, gap=figs.get("gap"), sigma=sigma)
        return gen, (fake_loss, figs["fake_score/mse"].float().mean(), f_norm)

    # ------------------------------------------------------------------ overlap=True

    @property
    def overlap_active(self):
        """Whether steps run the fake score's update on a second thread (overlap=True where
        the results stay the same bit for bit: see the class docstring)."""
        return self.overlap and self.overlap_unused_reason() is None

    def overlap_unused_reason(self):
        """Why overlap=True is not used with these settings (a phrase), or None if it is."""
        cfg = self.config
        for bad, why in ((cfg.update_order != "single-forward", "it needs update_order single-forward"),
                         (self.device.type != "cpu", "it is built for CPU only"),
                         (self.dist.enabled, "it runs on one process only"),
                         (self.compile_mode is not None, "it does not combine with compile"),
                         (bool(self.checkpointing), "activation checkpointing replays random draws "
                                                    "in the backward pass, on either thread"),
                         (cfg.loss != "ikl" or self._custom_loss is not None, "it needs the IKL loss"),
                         (self.adv_head is not None, "the data term calls the fake score on both threads"),
                         (cfg.teacher_mode != "eval" and not self._shares_fake_forward(),
                          "with --augment the train-mode teacher and the fake score would draw dropout "
                          "masks on two threads at once")):
            if bad:
                return why
        return None

    def _start_worker(self, fn, *args):
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gan-refine-fake-score")
        return self._worker.submit(fn, *args)

    def close(self):
        """Stop the worker thread of overlap=True (also done when the refiner is collected)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    def __del__(self):
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.shutdown(wait=False)

    def _fake_eval_twin(self):
        """The fake score in eval mode for the generator's loss while the worker thread trains
        it: a second module tree over the very same parameter and buffer tensors, so that the
        two threads do not share the modules' train/eval flags."""
        if self._fake_twin is None or self._fake_twin[0] is not self.fake_score:
            shared = {id(t): t for t in list(self.fake_score.parameters()) + list(self.fake_score.buffers())}
            twin = copy.deepcopy(self.fake_score, memo=shared).eval()
            self._fake_twin = (self.fake_score, twin)
        return self._fake_twin[1]

    def _fake_backward_branch(self, threads, fake_loss):
        """The fake score's backward from a loss built on the calling thread (the shared
        forward of teacher mode train), on the worker thread; returns (checks, gradient norm)."""
        torch.set_num_threads(threads)
        checks = _Checks()
        return checks, self._backward(fake_loss, self.opt_fake, self._f_params, self.scaler_fake, checks,
                                      "fake-score")

    def _fake_score_branch(self, threads, x0, sigma, noise, c):
        """The fake score's loss and gradient on the detached sample, on the worker thread
        (grad mode, autocast and the intra-op thread count are per thread: set here). The
        optimiser steps later, on the caller's thread, after the step's checks."""
        torch.set_num_threads(threads)
        checks = _Checks()
        with torch.enable_grad():
            return checks, self._fake_score_gradient(x0, sigma, noise, c, checks)

    def _gather_stats(self, gen, fake, checks):
        """Losses (means over the global batch), gradient norms, the mean gap |D_phi - D_T|
        overall and per noise-level bin, and the step's NaN/inf checks: combined over ranks in
        one collective and brought to the host in one transfer. Raises NonFiniteError if a
        check failed on any rank."""
        world = self.dist.world_size
        fake_losses, fake_mse, fake_norms = (torch.stack(v) for v in zip(*fake))
        values = [gen["loss"].float() / world, fake_losses.mean() / world, fake_mse.mean() / world,
                  gen["norm"].float() / world, fake_norms.float().mean() / world]
        gap = gen["gap"]
        if gap is not None:
            gap = gap.detach().float()
            idx = bin_index(gen["sigma"].float(), self.config.gap_bins)
            values += [gap.sum(), torch.tensor(float(gap.numel()), device=gap.device)]
            for k in range(len(self._bin_names)):
                mask = (idx == k).float()
                values += [(gap * mask).sum(), mask.sum()]
        extra_names = sorted(self._extra)
        values += [self._extra[k].float() / world for k in extra_names]
        n_stats = len(values)
        values += [f.float() for f in checks.flags]
        vec = self.dist.all_reduce(torch.stack([v.to(self.device) for v in values]),
                                   what="combining step statistics").tolist()
        bad = checks.first_bad(vec[n_stats:])
        if bad is not None:
            what, updated = bad
            raise NonFiniteError(f"{what} is NaN/inf at step {self.cur_step + 1}; {self._blame(updated)}")
        stats = {"loss/generator": vec[0], "loss/fake_score": vec[1], "fake_score/mse": vec[2],
                 "grad_norm/generator": vec[3], "grad_norm/fake_score": vec[4]}
        for i, name in enumerate(extra_names):
            stats[name] = vec[n_stats - len(extra_names) + i]
        if gap is not None:
            stats["gap/mean"] = vec[5] / vec[6]
            for k, name in enumerate(self._bin_names):
                total, count = vec[7 + 2 * k], vec[8 + 2 * k]
                if count > 0:
                    stats[f"gap/{name}"] = total / count
        return stats

    # ------------------------------------------------------------------ loops

    def steps_for(self, kimg):
        """Generator updates needed to show `kimg` thousand images at this batch size."""
        return steps_for_kimg(kimg, self.config.batch)

    def iterate(self, steps=None, kimg=None):
        """Yield the statistics of each step; endless when neither steps nor kimg is given."""
        n = self.steps_for(kimg) if kimg is not None else steps
        done = 0
        while n is None or done < n:
            yield self.step()
            done += 1

    def run(self, steps=None, kimg=None, callback=None):
        """Run `steps` updates (or `kimg` thousand images); `callback(refiner, stats)` after
        each may return False to stop early. Returns the last step's statistics."""
        if steps is None and kimg is None:
            raise ValueError("give steps= or kimg=")
        stats = None
        for stats in self.iterate(steps=steps, kimg=kimg):
            if callback is not None and callback(self, stats) is False:
                break
        return stats

    # ------------------------------------------------------------------ results

    def sync_ema(self):
        """Copy rank 0's EMA weights to every rank (a collective; nothing to do on one process)."""
        if self.dist.enabled:
            self.dist.broadcast_tensors(list(self.G_ema.parameters()) + list(self.G_ema.buffers()),
                                        what="sharing the EMA weights")

    def refined_generator(self, ema=True):
        """The refined network as the user's own module class (live, on the refiner's device)."""
        return (self.G_ema if ema else self.G).module

    @torch.no_grad()
    def sample(self, n, seed=0, ema=True, batch=None):
        """Images from fixed seeds (CPU-drawn, so identical on any device); [-1, 1], NCHW, CPU."""
        net = self.G_ema if ema else self.G
        gen = torch.Generator().manual_seed(int(seed))
        z, c = net.sample_latents(n, generator=gen, device=self.device,
                                  label_probs=self.config.label_probs)
        out = []
        step = batch or self.config.batch
        with _global_rng_scope(int(seed), self.device), self._precision_flags():
            for i in range(0, n, step):
                with self._autocast():
                    out.append(net(z[i:i + step], c[i:i + step]).float().cpu())
        return torch.cat(out)

    def metadata(self, **extra):
        """Plain-type description of this refinement, stored in exported pickles."""
        import gan_refine
        meta = {
            "gan_refine_version": gan_refine.__version__,
            "torch_version": str(torch.__version__),  # a TorchVersion object is not plain data
            "method": "diff-instruct" if self.config.loss == "ikl" else self.config.loss,
            "options": self.config.to_dict(),
            "step": self.cur_step,
            "kimg": self.cur_nimg / 1000,
            "start_from": self.gen_key,
            # How it ran: settings that change speed and memory, not the result.
            "execution": {"compile": self.compile_mode or False, "activation_checkpointing": sorted(self.checkpointing),
                          "overlap": self.overlap_active},
        }
        meta.update(extra)
        return meta

    def export_dict(self, base=None):
        """The network dict to pickle: `base` (default: the pickle dict the generator came from)
        with G_ema and G replaced by the refined networks; every other entry kept."""
        base = self.base if base is None else base
        data = dict(base) if base is not None else {}

        def frozen(net):
            return copy.deepcopy(net.module).eval().requires_grad_(False).cpu()
        data["G_ema"] = frozen(self.G_ema)
        if base is None or "G" in data:
            data["G"] = frozen(self.G)
        return data

    def export_pickle(self, path, base=None, check=True, **extra_metadata):
        """Write the refined network pickle (original layout plus a 'gan_refine' entry).

        With `check` (default) nothing is written unless upstream loaders could import every
        class in the stream (persistent classes, torch, numpy); pass check=False to export a
        network whose class lives in your own importable code.
        """
        from .pickles import save_network_pkl
        return save_network_pkl(self.export_dict(base), path, check=check,
                                metadata=self.metadata(**extra_metadata))

    # ------------------------------------------------------------------ state

    def state_dict(self):
        """Everything needed to continue bit-for-bit: networks, optimisers, counters, RNGs."""
        def opt(s):
            return None if s is None else s.state_dict()
        return {
            "config": self.config.to_dict(),
            "step": self.cur_step,
            "nimg": self.cur_nimg,
            "G": self.G.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "fake_score": self.fake_score.state_dict(),
            **({"adv_head": self.adv_head.state_dict()} if self.adv_head is not None else {}),
            "opt_G": self.opt_G.state_dict(),
            "opt_fake": self.opt_fake.state_dict(),
            "scaler_G": opt(self.scaler_G),
            "scaler_fake": opt(self.scaler_fake),
            "rng": {"refiner": self.rng.get_state(), "device_type": self.device.type,
                    "global": capture_global_rng()},
        }

    def load_state_dict(self, state):
        """Restore a state from `state_dict()`; the method settings must match this refiner's."""
        saved = RefineConfig.from_dict(state["config"]).to_dict()
        mine = self.config.to_dict()
        diff = [k for k in mine if k not in METHOD_FIELDS_RESUMABLE and mine[k] != saved[k]]
        if diff:
            detail = ", ".join(f"{k}: saved {saved[k]!r} vs now {mine[k]!r}" for k in diff)
            raise ValueError(f"the state was saved with different refine options ({detail}); "
                             f"use the same options to resume")
        from .snapshot import describe_state_mismatch
        for part, net, what in (("G", self.G, "this generator"), ("G_ema", self.G_ema, "this generator"),
                                ("fake_score", self.fake_score, "this teacher")):
            try:
                net.load_state_dict(state[part])
            except RuntimeError as err:  # torch's message spans many lines: one line that counts
                raise ValueError(describe_state_mismatch(err, part=part, target=what)) from None
        if self.adv_head is not None:
            if "adv_head" not in state:
                raise ValueError("the state was saved without the data term's discriminator head; "
                                 "resume with the options it was saved with")
            self.adv_head.load_state_dict(state["adv_head"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_fake.load_state_dict(state["opt_fake"])
        for scaler, key in ((self.scaler_G, "scaler_G"), (self.scaler_fake, "scaler_fake")):
            if scaler is not None and state.get(key):
                scaler.load_state_dict(state[key])
        self.cur_step = int(state["step"])
        self.cur_nimg = int(state["nimg"])
        self._updated = self.cur_step > 0
        saved_type = state["rng"].get("device_type", "cpu")
        if saved_type != self.device.type:
            raise ValueError(f"the state was saved on a {saved_type} device and cannot continue "
                             f"bit-for-bit on {self.device.type}; resume with --device {saved_type}")
        self.rng.set_state(state["rng"]["refiner"].cpu())
        restore_global_rng(state["rng"]["global"])


def refine(generator, teacher, *, steps=None, kimg=None, config=None, export=None, base=None,
           callback=None, **kwargs):
    """Refine `generator` against `teacher` and return the refined module (the EMA weights).

    Keyword arguments are those of Refiner (batch=, lr_gen=, ..., generator_kwargs=). With
    `export=path` the refined network pickle is also written there (layout of `base`, or of
    the pickle dict passed as `generator`).
    """
    r = Refiner(generator, teacher, config, **kwargs)
    r.run(steps=steps, kimg=kimg, callback=callback)
    if export is not None:
        r.export_pickle(export, base=base)
    return r.refined_generator()
