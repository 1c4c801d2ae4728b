"""Resolved options of a refinement, each default defined once (docs/design.md, "The method").

`RefineConfig` holds everything the Refiner needs (the method); `RunConfig` adds what only a
command-line run needs (sources, duration, outputs). The CLI takes its defaults from here.
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import List, Optional, Tuple

__all__ = ["RefineConfig", "RunConfig", "LOSSES", "NORMALIZE", "SIGMA_LAWS", "PRECISIONS",
           "TEACHER_MODES", "METHOD_FIELDS_RESUMABLE"]

LOSSES = ("ikl", "sid")
NORMALIZE = ("none", "dmd")
SIGMA_LAWS = ("lognormal", "karras-uniform")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
TEACHER_MODES = ("eval", "train")


@dataclass
class RefineConfig:
    # Images per generator update; the official Diff-Instruct README run used 128.
    batch: int = 128
    # Generator learning rate (official Diff-Instruct code).
    lr_gen: float = 1e-5
    # Fake-score learning rate (official Diff-Instruct code).
    lr_fake: float = 1e-5
    # Adam betas for both optimisers; beta1 = 0 as in the official code.
    betas: Tuple[float, float] = (0.0, 0.999)
    # Adam epsilon for both optimisers.
    adam_eps: float = 1e-8
    # Fake-score updates before each generator update (1:1 alternation; DMD2 used 5).
    fake_updates: int = 1
    # Extra fake-score updates before the first generator update, so the fake score (a copy of
    # the teacher) has learnt the starting generator's samples before it steers the generator.
    fake_warmup: int = 0
    # Generator loss: 'ikl' (Diff-Instruct) or 'sid' (Score identity Distillation).
    loss: str = "ikl"
    # 'dmd' divides the IKL gradient by mean|x0 - D_T| per sample (DMD); 'none' keeps it raw.
    normalize: str = "none"
    # SiD's alpha (the default of SiD's reference code).
    sid_alpha: float = 1.2
    # Noise-level law: EDM's log-normal, or uniform over the Karras schedule.
    sigma_law: str = "lognormal"
    # Log-normal law mean of ln(sigma) (EDM training default).
    P_mean: float = -1.2
    # Log-normal law std of ln(sigma) (EDM training default).
    P_std: float = 1.2
    # Karras-uniform law: smallest noise level (EDM sampler default).
    sigma_min: float = 0.002
    # Karras-uniform law: largest noise level (EDM sampler default).
    sigma_max: float = 80.0
    # Karras-uniform law: schedule curvature (EDM sampler default).
    rho: float = 7.0
    # Karras-uniform law: fraction of the schedule used from the clean end (SiD used 0.8).
    t_max: float = 1.0
    # 'eval': teacher and fake score in eval mode for the generator step (deterministic g);
    # 'train': both in train mode with one shared dropout mask, as the official code ran them.
    teacher_mode: str = "eval"
    # Generator EMA half-life in thousands of images (EDM's training-loop default).
    ema_kimg: float = 500.0
    # EMA ramp-up: half-life at most this fraction of the images seen so far; 0 disables.
    ema_rampup: float = 0.05
    # Clip each network's gradient to this global L2 norm; 0 disables clipping.
    grad_clip: float = 0.0
    # fp32 everywhere; tf32, bf16 (autocast) and fp16 (autocast + loss scaling) need CUDA.
    precision: str = "fp32"
    # 'auto' picks CUDA when available, else CPU; or any torch device string.
    device: str = "auto"
    # Seeds every random draw of the run (latents, labels, noise levels, noise, dropout).
    seed: int = 0
    # Label distribution for conditional generators (one weight per class); None = uniform.
    label_probs: Optional[List[float]] = None
    # Noise-level bin edges for the logged mean |D_phi - D_T| per bin.
    gap_bins: Tuple[float, ...] = (0.1, 0.5, 2.0, 10.0)

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
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"betas must be two numbers in [0, 1), got {self.betas}")
        need(self.adam_eps > 0, "adam_eps must be positive")
        need(self.fake_updates >= 1, f"fake_updates must be at least 1, got {self.fake_updates}")
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


# Method settings a resumed run may change without breaking the run it continues.
METHOD_FIELDS_RESUMABLE = ("device", "precision")


@dataclass
class RunConfig:
    # Generator network pickle: path, URL or name from pretrained_urls.json.
    gen: str = ""
    # Teacher: path, URL, name, or 'edm' to pick the EDM model matching the generator.
    teacher: str = "edm"
    # Which generator of the pickle to start from (the EMA one, as upstream exports it).
    gen_key: str = "G_ema"
    # Root folder; each run gets a fresh numbered sub-folder inside.
    outdir: str = "runs"
    # Duration in thousands of generated images (generator updates x batch).
    kimg: float = 200.0
    # Snapshot interval in thousands of images (a snapshot is also written at the end).
    snap: float = 50.0
    # Sample grid side (grid x grid images with fixed seeds); 0 disables grids.
    grid: int = 8
    # State file of an earlier run to continue from (or that run's folder).
    resume: Optional[str] = None
    # Metrics computed on G_ema before refining and at every snapshot ('fid', 'kid', 'pr').
    metrics: List[str] = field(default_factory=list)
    # Their reference: statistics .npz, image folder/array, URL or table name; 'auto' = the
    # table's reference statistics for the generator's data set and resolution.
    metrics_ref: str = "auto"
    # Generated images per evaluation; None = the reference's protocol (table 'eval_num'),
    # else 50,000 as in the standard FID.
    metrics_num: Optional[int] = None
    # Feature network; 'auto' = the one the reference was made with, else Inception-v3.
    metrics_detector: str = "auto"
    # Seconds a process of a multi-process run waits for the others before it fails: long
    # enough for rank 0's snapshot or evaluation, short enough that a lost rank ends the run.
    dist_timeout: float = 900.0
    # The method settings.
    refine: RefineConfig = field(default_factory=RefineConfig)

    def to_dict(self):
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        return d
