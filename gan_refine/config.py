"""Resolved options of a refinement, each default defined once (docs/design.md, "The method").

`RefineConfig` holds everything the Refiner needs (the method); `RunConfig` adds what only a
command-line run needs (sources, duration, outputs). Each field carries its help text; the CLI
builds its options from these fields (default and help), and docs/cli.md's options table is
generated from the CLI, so the three cannot disagree (tests/test_cli.py checks the docs).
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import List, Optional, Tuple

__all__ = ["RefineConfig", "RunConfig", "field_help", "field_default", "LOSSES", "NORMALIZE", "SIGMA_LAWS", "PRECISIONS",
           "TEACHER_MODES", "METHOD_FIELDS_RESUMABLE", "PRESETS"]

LOSSES = ("ikl", "sid")
NORMALIZE = ("none", "dmd")
SIGMA_LAWS = ("lognormal", "karras-uniform")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
TEACHER_MODES = ("eval", "train")


def _opt(default=dataclasses.MISSING, help="", *, factory=None, why=""):
    """A field with its help text (the CLI's --help and docs/cli.md read it from here).
    `why`: where the default comes from, shown in the docs' options table."""
    meta = {"help": help, "why": why}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RefineConfig:
    batch: int = _opt(128, "Images per generator update: the global batch, split over processes.",
                      why="official Diff-Instruct README run")
    lr_gen: float = _opt(1e-5, "Generator learning rate (Adam).", why="official Diff-Instruct README run")
    lr_fake: float = _opt(1e-5, "Fake-score learning rate (Adam).", why="official Diff-Instruct README run")
    lr_gen_halflife_kimg: float = _opt(0.0, "Halve the generator's learning rate every this many kimg "
                                            "(exponential decay from the start); 0 keeps it constant.",
                                       why="official code: constant")
    lr_rampup_kimg: float = _opt(0.0, "Ramp the generator's learning rate up linearly over this many kimg "
                                      "(EDM's lr_rampup_kimg; the update after n images uses "
                                      "lr * min((n + batch) / ramp, 1)); 0 starts at the full rate.",
                                 why="official code: no ramp-up")
    mapping_lr_mult: float = _opt(1.0, "Scale of the generator's learning rate for the parameters of its "
                                        "mapping network (StyleGAN's `mapping`, whose layers already run at "
                                        "0.01x through their lr_multiplier); 1 treats all parameters alike.",
                                  why="official code: one learning rate")
    betas: Tuple[float, float] = _opt((0.0, 0.999), "Adam betas for both networks.",
                                      why="official code (beta1 = 0)")
    adam_eps: float = _opt(1e-8, "Adam epsilon.", why="PyTorch and official code")
    fake_updates: int = _opt(1, "Fake-score updates per generator update.",
                             why="official 1:1 alternation (DMD2 used 5)")
    noise_draws: int = _opt(1, "Noise draws (a noise level and its noise) per generated image in the "
                               "generator's loss, which averages over them: a lower-variance gradient "
                               "for more teacher and fake-score forwards, with no extra generator "
                               "work (official update order only).",
                            why="official code: one")
    # The fake score starts as a copy of the teacher, i.e. as the data's score, not the
    # generator's: warming it up first lets it learn the generator before steering it.
    fake_warmup: int = _opt(0, "Extra fake-score updates on the starting generator's samples before "
                               "the first generator update.")
    loss: str = _opt("ikl", "Generator loss: 'ikl' (Diff-Instruct) or 'sid' (Score identity Distillation).")
    normalize: str = _opt("none", "'dmd' divides the IKL gradient by mean|x0 - D_T| per sample (DMD).")
    sid_alpha: float = _opt(1.2, "SiD's alpha (with --loss sid).", why="SiD's reference code")
    sigma_law: str = _opt("lognormal", "Noise-level law: EDM's 'lognormal', or 'karras-uniform' over "
                                       "the Karras schedule.")
    P_mean: float = _opt(-1.2, "Log-normal law: mean of ln(sigma).", why="EDM training default")
    P_std: float = _opt(1.2, "Log-normal law: std of ln(sigma).", why="EDM training default")
    sigma_min: float = _opt(0.002, "Karras-uniform law: smallest sigma.", why="EDM sampler default")
    sigma_max: float = _opt(80.0, "Karras-uniform law: largest sigma.", why="EDM sampler default")
    rho: float = _opt(7.0, "Karras-uniform law: schedule exponent.", why="EDM sampler default")
    t_max: float = _opt(1.0, "Karras-uniform law: fraction of the schedule used from the clean end.",
                        why="SiD used 0.8")
    # 'eval' makes the generator's gradient deterministic given its inputs; the official code
    # ran both networks in train mode with one shared dropout mask ('train').
    teacher_mode: str = _opt("eval", "'eval', or 'train' (teacher and fake score in train mode with "
                                     "one shared dropout mask, as the official code).")
    ema_kimg: float = _opt(500.0, "Generator EMA half-life in kimg.", why="EDM training loop")
    ema_rampup: float = _opt(0.05, "EMA ramp-up: half-life at most this fraction of the images seen; "
                                   "0 disables.", why="EDM training loop")
    grad_clip: float = _opt(0.0, "Clip each network's gradient to this L2 norm; 0 disables.")
    precision: str = _opt("fp32", "fp32 (TF32 off), tf32, bf16 (autocast) or fp16 (autocast with loss "
                                  "scaling); all but fp32 need CUDA. StyleGAN and EDM networks refuse "
                                  "autocast (they check their layers' dtypes), so with them use tf32.")
    force_fp32: bool = _opt(False, "Run the networks' built-in fp16 layers (StyleGAN's top "
                                   "resolutions, EDM's use_fp16) in fp32.")
    device: str = _opt("auto", "'auto' (CUDA if available, else CPU), 'cpu', 'cuda:0', ...")
    seed: int = _opt(0, "Seed of every random draw (latents, labels, noise levels, noise, dropout).")
    label_probs: Optional[List[float]] = _opt(None, "Comma-separated class weights for conditional "
                                                    "generators (default: uniform).")
    gap_bins: Tuple[float, ...] = _opt((0.1, 0.5, 2.0, 10.0), "Noise-level bin edges for the logged "
                                                              "mean |D_phi - D_T| per bin.")
    augment: float = _opt(0.0, "Augment the fake score's training images with this probability per "
                               "transform, with EDM's augment labels (the teacher pickle's augment_pipe "
                               "when the teacher takes augment labels, else gan_refine's geometric one "
                               "and a new zero-initialised label input); 0 disables.",
                          why="official code used 0.12; 0 keeps the plain method")
    data_weight: float = _opt(0.0, "Weight of the real-data term in the generator's loss: a GAN loss "
                                   "through a discriminator head on the fake score's encoder, trained on "
                                   "--data images against generated ones (DMD2/SiDA style); per pixel, "
                                   "as DMD2's 3e-3; 0 = data-free.",
                              why="0 keeps the plain, data-free method")
    data_d_weight: float = _opt(1e-2, "Weight of the discriminator head's loss in the fake score's loss "
                                      "(with --data-weight > 0), per pixel.",
                                why="DMD2's guidance classifier weight")
    # The official order trains the fake score on a sample of its own before the generator's
    # update. DMD2's order reuses the generator's sample: one generator forward less per step,
    # and with --teacher-mode train one fake-score forward less (docs/design.md, "The method").
    update_order: str = _opt("official", "'official': fake-score update(s) on a fresh no-grad sample, then "
                                         "the generator update (Diff-Instruct's loop, bit for bit); "
                                         "'single-forward': one generator forward per step, whose detached "
                                         "sample, noise levels and noise also train the fake score, both "
                                         "networks updating from the same state (DMD2's order; faster, but "
                                         "worse FID at the digits preset's large generator step: "
                                         "docs/benchmarks.md, 'Fast path quality').",
                             why="official Diff-Instruct code")
    overlap: bool = _opt(False, "With --update-order single-forward on CPU: the fake score's update (with "
                                "--teacher-mode train: its backward) runs on a second thread beside the "
                                "teacher's forward and the generator's backward, each branch on half of "
                                "torch's threads; the same numbers bit for bit, faster (not with --loss "
                                "sid, --data, activation checkpointing, or --augment in train mode).")
    UPDATE_ORDERS = ("official", "single-forward")  # a class constant, not a field

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        self.gap_bins = tuple(float(b) for b in self.gap_bins)
        if self.label_probs is not None:
            self.label_probs = [float(p) for p in self.label_probs]
        self.validate()

    def validate(self):
        """Raise ValueError with a sentence a person can act on for any out-of-range setting."""
        def need(ok, msg):
            if not ok:
                raise ValueError(msg)
        need(self.batch >= 1, f"batch must be at least 1, got {self.batch}")
        need(self.lr_gen > 0 and self.lr_fake > 0, "learning rates must be positive")
        need(self.mapping_lr_mult > 0, f"mapping_lr_mult must be positive, got {self.mapping_lr_mult}")
        need(self.lr_gen_halflife_kimg >= 0, "lr_gen_halflife_kimg must be >= 0 (0 = constant)")
        need(self.lr_rampup_kimg >= 0, "lr_rampup_kimg must be >= 0 (0 = no ramp-up)")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"betas must be two numbers in [0, 1), got {self.betas}")
        need(self.adam_eps > 0, "adam_eps must be positive")
        need(self.fake_updates >= 1, f"fake_updates must be at least 1, got {self.fake_updates}")
        need(self.noise_draws >= 1, f"noise_draws must be at least 1, got {self.noise_draws}")
        need(self.noise_draws == 1 or self.update_order == "official",
             f"noise_draws {self.noise_draws} needs update_order official (the single-forward order "
             "shares its one noise draw with the fake score's update): set noise_draws to 1 "
             "(--noise-draws 1) to use single-forward")
        need(self.fake_warmup >= 0, f"fake_warmup must be >= 0, got {self.fake_warmup}")
        need(self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        need(self.normalize in NORMALIZE,
             f"normalize must be one of {', '.join(NORMALIZE)}, got {self.normalize!r}")
        need(self.sigma_law in SIGMA_LAWS,
             f"sigma_law must be one of {', '.join(SIGMA_LAWS)}, got {self.sigma_law!r}")
        need(self.P_std > 0, "P_std must be positive")
        need(0 < self.sigma_min < self.sigma_max, "need 0 < sigma_min < sigma_max")
        need(self.rho > 0 and 0 < self.t_max <= 1, "need rho > 0 and 0 < t_max <= 1")
        need(self.teacher_mode in TEACHER_MODES,
             f"teacher_mode must be one of {', '.join(TEACHER_MODES)}, got {self.teacher_mode!r}")
        need(self.ema_kimg >= 0 and self.ema_rampup >= 0, "ema_kimg and ema_rampup must be >= 0")
        need(0 <= self.augment <= 1, f"augment is a probability in [0, 1], got {self.augment}")
        need(self.data_weight >= 0 and self.data_d_weight > 0,
             "data_weight must be >= 0 and data_d_weight > 0")
        need(self.grad_clip >= 0, "grad_clip must be >= 0 (0 disables clipping)")
        need(self.precision in PRECISIONS,
             f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        need(list(self.gap_bins) == sorted(self.gap_bins), "gap_bins must be ascending")
        need(isinstance(self.seed, int) and 0 <= self.seed < 2 ** 63,
             f"seed must be an integer from 0 to 2**63 - 1, got {self.seed!r}")
        if self.label_probs is not None:
            p = self.label_probs
            need(all(math.isfinite(v) and v >= 0 for v in p) and sum(p) > 0,
                 f"label_probs must be non-negative class weights with a positive sum, got {p}")

    def to_dict(self):
        """Plain Python types only (lists, not tuples), ready for JSON and for pickles."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown refine option(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _field(cls, name):
    for f in fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def field_help(cls, name):
    """The help text of a config field, and where its default comes from."""
    f = _field(cls, name)
    why = f.metadata.get("why")
    return f.metadata.get("help", "") + (f" Default from: {why}." if why else "")


def field_default(cls, name):
    f = _field(cls, name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


# Named bundles of method settings, EDM-style (`--preset`); options given explicitly win.
PRESETS = {
    "paper-cifar10": dict(
        about="the official Diff-Instruct values (its README's CIFAR-10 run): batch 128, Adam lr 1e-5 "
              "for both networks, betas (0, 0.999), 1:1 updates, EDM's log-normal sigma, teacher "
              "and fake score in train mode with a shared dropout mask",
        method=dict(batch=128, lr_gen=1e-5, lr_fake=1e-5, betas=(0.0, 0.999), adam_eps=1e-8,
                    fake_updates=1, fake_warmup=0, loss="ikl", normalize="none",
                    sigma_law="lognormal", P_mean=-1.2, P_std=1.2, teacher_mode="train",
                    ema_kimg=500.0, ema_rampup=0.05)),
    "digits": dict(
        about="the best settings measured on the shipped digits pairs (docs/benchmarks.md): batch "
              "32, generator lr 8e-3 with DMD's per-sample normalisation of the gradient, fake-score "
              "lr 1e-3, 300 fake-score warm-up updates, log-normal sigma centred at 1 (P_mean 0), "
              "EMA ramp-up 0.1, four noise draws per generated image in the generator's loss and two "
              "fake-score updates per generator update",
        method=dict(batch=32, lr_gen=8e-3, lr_fake=1e-3, fake_warmup=300, P_mean=0.0, normalize="dmd",
                    ema_rampup=0.1, noise_draws=4, fake_updates=2)),
}
# The conditional digits pair: the same, with SiD's generator loss, which helped there (and was
# neutral on the unconditional pair: docs/quality/2026-12-02-cpu-sweep-cond.md), and three
# fake-score updates per generator update: its gap is coverage, and a fake score that keeps up
# with the generator's samples helped there. Two beat one (docs/quality/2026-12-06-cpu-sweep.md),
# and three beat two on every figure on three paired seeds, at 1.4x the time per step
# (docs/quality/2026-12-08-cpu-epyc-cond-fu3.md). It keeps one noise draw per image: the four of
# the unconditional preset (docs/quality/2026-12-07-cpu-sweep.md) moved this pair's FID within
# the seeds' noise at 1.7x the time, with more near-duplicates
# (docs/quality/2026-12-07-cpu-epyc-cond-sweep.md). The unconditional preset's two fake-score
# updates: with its four noise draws, two left FID within the seeds' noise and raised recall on
# every seed, in the detector's features and in pixels, at 1.2x the time per step
# (docs/quality/2026-12-08-cpu-epyc-uncond-fu2.md).
PRESETS["digits-cond"] = dict(
    about="the best settings measured on the conditional digits pair: the digits preset with SiD's "
          "generator loss (alpha 1.2), three fake-score updates per generator update and one noise "
          "draw per image",
    method=dict(PRESETS["digits"]["method"], loss="sid", fake_updates=3, noise_draws=1))


# Method settings a resumed run may change without breaking the run it continues.
METHOD_FIELDS_RESUMABLE = ("device", "precision", "overlap")


@dataclass
class RunConfig:
    gen: str = _opt("", "Generator network pickle: path, URL or name from pretrained_urls.json.")
    teacher: str = _opt("edm", "Diffusion teacher pickle: path, URL, name, or a family/data-set word "
                               "('edm', 'digits') to pick the table's teacher matching the generator.")
    more_teachers: List[str] = _opt(help="Further teachers (a second and later --teacher): the generator "
                                         "follows the weighted mixture of all teachers' denoisers.",
                                    factory=list)
    teacher_weights: Optional[List[float]] = _opt(None, "Comma-separated weights of the teachers, in "
                                                        "--teacher order (default: equal).")
    gen_key: str = _opt("G_ema", "Which generator of the pickle to refine.", why="upstream's EMA export")
    outdir: str = _opt("runs", "Where to create the numbered run folder.")
    kimg: float = _opt(200.0, "Refinement length in thousands of generated images.")
    snap: float = _opt(50.0, "Snapshot interval in thousands of images (and one at the end).")
    grid: int = _opt(8, "Sample grid side (grid x grid images, fixed seeds); 0 = no grids.")
    resume: Optional[str] = _opt(None, "Continue from a refine-state.pt (or the run folder holding it); "
                                       "needs --gen and --teacher again, other unset options come from it.")
    metrics: List[str] = _opt(help="Evaluate G_ema before refining and at every snapshot: comma-separated "
                                   "fid, kid, pr (or fid50k_full, kid50k_full, pr50k3_full); or none.",
                              factory=list)
    metrics_ref: str = _opt("auto", "Reference for --metrics: statistics .npz (mu/sigma), image folder or "
                                    "array, URL, or a 'fid-ref' name; auto = the table's statistics for "
                                    "the generator's data set.")
    metrics_num: Optional[int] = _opt(None, "Generated images per evaluation; default: the reference's "
                                            "protocol (2,000 for digits), else 50,000.")
    metrics_detector: str = _opt("auto", "Feature network for --metrics; auto = the reference's own, "
                                         "else Inception-v3.")
    metrics_seeds: Optional[str] = _opt(None, "Generator seeds for --metrics, as ranges (0-49999 or "
                                              "0,5,10-20); default: 0 to --metrics-num minus 1.")
    # Long enough for rank 0's snapshot or evaluation, short enough that a lost rank ends the run.
    dist_timeout: float = _opt(900.0, "Seconds a process of a torchrun run waits for the others before "
                                      "it fails with an error.")
    preset: Optional[str] = _opt(None, "A named bundle of method settings: paper-cifar10 (the official "
                                       "Diff-Instruct values), digits (the best measured on the shipped "
                                       "unconditional digits pair) or digits-cond (the same with SiD's loss and "
                                       "three fake-score updates per generator update, best on the "
                                       "conditional pair); options given explicitly win.")
    data: Optional[str] = _opt(None, "Real training images for --data-weight: an image folder, a "
                                     "StyleGAN/EDM dataset zip (labels from its dataset.json) or a .npy/.npz "
                                     "array; only read. Give the training split only.")
    tensorboard: str = _opt("auto", "TensorBoard events in the run folder: auto (when the tensorboard "
                                    "package is installed), on, or off.")
    refine: RefineConfig = field(default_factory=RefineConfig)
    # Where each setting came from: 'command line', 'preset NAME', 'resumed state' or 'default'.
    sources: dict = field(default_factory=dict)

    def to_dict(self):
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        return d
