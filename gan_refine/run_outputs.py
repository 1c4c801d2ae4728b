"""The files of one run folder: sample grids, snapshots, resume state, stats.jsonl,
metrics.jsonl, log.txt and (when the tensorboard package is installed) TensorBoard events.

Every rank of a multi-process run holds a RunOutputs; only rank 0 writes. Evaluations are
shared between the ranks, so `evaluate` and `snapshot` are collective calls.
"""

import os
import sys
import time

from . import distributed

__all__ = ["RunError", "RunOutputs", "Console", "kimg_tag", "snapshot_bytes"]


class RunError(Exception):
    """A problem with the run's inputs or outputs, described in one line."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


class Console:
    """Rank 0's messages: to the terminal (apart from a live progress bar) and, once the run
    folder exists, to its log.txt as well, as upstream training loops keep one."""

    def __init__(self, dist):
        self.dist = dist
        self.path = None
        self._pending = []   # lines said before the run folder existed

    def open(self, run_dir):
        if self.dist.is_main:
            self.path = os.path.join(run_dir, "log.txt")
            for line in self._pending:
                self._append(line)
            self._pending = []

    def say(self, message, console=True):
        if not self.dist.is_main:
            return
        if console:
            from tqdm.auto import tqdm
            tqdm.write(message, file=sys.stderr)
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if self.path is None:
            self._pending.append(stamped)
        else:
            self._append(stamped)

    def _append(self, line):
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            pass  # the log is a convenience; the writes that matter report their own failures




def kimg_tag(nimg):
    """Snapshot names count thousands of images, as upstream's do: network-snapshot-000200.pkl
    is the snapshot at 200 kimg. Runs shorter than a kimg per snapshot (tests, quick checks)
    get three decimals, 000000.008, which still sort in order."""
    nimg = int(nimg)
    return f"{nimg // 1000:06d}" if nimg % 1000 == 0 else f"{nimg / 1000:010.3f}"


def write_or_fail(fn, *args):
    """A write of the run's outputs; a full disk or a lost folder becomes one line."""
    try:
        return fn(*args)
    except OSError as err:
        raise RunError(err) from None


def snapshot_bytes(refiner, gen_target):
    """About what one snapshot pickle plus one state file take on disk."""
    def size(module):
        return sum(t.numel() * t.element_size() for t in module.state_dict().values())
    g, fake = size(refiner.G), size(refiner.fake_score)
    state = 2 * g + g * 2 + fake * 3            # G, G_ema, Adam moments of G; fake score + moments
    base = os.path.getsize(gen_target) if os.path.isfile(gen_target) else 2 * g
    return int(1.1 * (state + base + 2 * g))    # the pickle holds its own G and G_ema


class RunOutputs:
    """Sample grids, refined pickles, state files and logs of one run folder.

    Every rank holds one; only rank 0 writes. Evaluations run on every rank (each generates a
    slice of the images), so `evaluate` and `snapshot` are collective calls.
    """

    GRID_SEED = 0  # fixed, so every grid of every run shows the same latents

    def __init__(self, refiner, run_dir, run, run_info, evaluation=None, dist=None, console=None):
        self.r, self.dir, self.run, self.run_info = refiner, run_dir, run, run_info
        self.dist = dist or distributed.Dist()
        self.console = console or Console(self.dist)
        self.tb = _tensorboard(run.tensorboard, run_dir) if self.dist.is_main else None
        self.evaluation = evaluation
        self.ref = None            # the --metrics reference, its image features computed once
        self.results = []          # (step, metrics dict) of every evaluation of this run
        self.first_grid = None     # the images of samples-init.png, for the before/after grid
        self.last_grid = None

    def log_stats(self, stats):
        if self.dist.is_main:
            from .snapshot import append_jsonl
            write_or_fail(append_jsonl, os.path.join(self.dir, "stats.jsonl"), stats)
            if self.tb is not None:
                for k, v in stats.items():
                    if k not in ("step", "time") and isinstance(v, (int, float)):
                        self.tb.add_scalar(k, v, global_step=stats["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def _checked_samples(self, n):
        from .refiner import NonFiniteError
        images = self.r.sample(n, seed=self.GRID_SEED)
        if not images.isfinite().all():
            raise NonFiniteError(f"the refined generator makes NaN/inf images at step {self.r.cur_step}; "
                                 f"not writing this snapshot (lower --lr-gen or add --grad-clip)")
        return images

    def grid(self, tag):
        self.dist.on_main(lambda: write_or_fail(self.grid_local, tag), "writing a sample grid")

    def before_after(self):
        """samples-before-after.png: the first grid of this run beside its last (same latents)."""
        if not self.dist.is_main:
            return
        from .images import save_image_pair
        if self.first_grid is not None and self.r.cur_step > 0:
            save_image_pair(self.first_grid, self.last_grid,
                            os.path.join(self.dir, "samples-before-after.png"), cols=self.run.grid)

    def evaluate(self, pkl):
        """Compute --metrics for G_ema now (every rank generates a share of the images); rank 0
        appends them to metrics.jsonl and prints one line."""
        if self.evaluation is None:
            return None
        from .metrics.parallel import evaluate_generator
        ev = self.evaluation
        self.r.sync_ema()
        try:
            res, self.ref = evaluate_generator(self.r.refined_generator(), ev, self.ref, self.r.device,
                                               self.dist)
        except (OSError, ValueError, RuntimeError) as err:
            if isinstance(err, distributed.DistributedError):
                raise
            raise RunError(f"--metrics: {str(err).splitlines()[0]}") from None
        if not self.dist.is_main:
            return None
        figures = {k: res[k] for k in ("fid", "kid", "kid_std", "precision", "recall") if k in res}
        line = dict(step=self.r.cur_step, kimg=self.r.cur_nimg / 1000, snapshot_pkl=pkl,
                    results=figures, num=res.get("num"), detector=res.get("detector"),
                    ref=ev["ref"], seconds=res.get("seconds"))
        from .snapshot import append_jsonl
        write_or_fail(append_jsonl, os.path.join(self.dir, "metrics.jsonl"), line)
        self.results.append((self.r.cur_step, figures))
        shown = "  ".join(f"{k} {v:.4g}" for k, v in figures.items())
        if self.tb is not None:
            for k, v in figures.items():
                self.tb.add_scalar(f"metrics/{k}", v, global_step=self.r.cur_step)
            self.tb.flush()
        self.console.say(f"step {self.r.cur_step}: {shown}  ({res.get('num')} images, detector "
                        f"{res.get('detector')})")
        return figures

    def summary(self):
        """One line comparing the first and last evaluation of this run."""
        if len(self.results) < 2:
            return
        (s0, first), (s1, last) = self.results[0], self.results[-1]
        parts = [f"{k.upper()} {first[k]:.4g} -> {last[k]:.4g}" for k in first if k in last and k != "kid_std"]
        self.console.say(f"G_ema at step {s0} vs step {s1}: " + ", ".join(parts))

    def snapshot(self):
        """Grid, network pickle and resume state (rank 0), then the metrics (every rank)."""
        tag = kimg_tag(self.r.cur_nimg)

        def write():  # rank 0 holds the EMA, and every rank's G and fake score are the same
            from .snapshot import save_state
            self.grid_local(tag)
            pkl = os.path.join(self.dir, f"network-snapshot-{tag}.pkl")
            self.r.export_pickle(pkl, run=dict(self.run_info, kimg_target=self.run.kimg))
            save_state(os.path.join(self.dir, "refine-state.pt"), dict(self.r.state_dict(), run=self.run_info))
            return pkl
        pkl = self.dist.on_main(lambda: write_or_fail(write), "writing a snapshot")
        self.console.say(f"snapshot at step {self.r.cur_step} ({self.r.cur_nimg / 1000:g} kimg): "
                         f"{os.path.basename(pkl)}", console=False)
        self.evaluate(os.path.basename(pkl))
        return pkl

    def grid_local(self, tag):
        from .images import image_grid, save_png
        n = self.run.grid ** 2
        images = self._checked_samples(max(n, 4))
        if n:
            grid = image_grid(images[:n], self.run.grid)  # the PNG's pixels, for TensorBoard too
            save_png(grid, os.path.join(self.dir, f"samples-{tag}.png"))
            if self.tb is not None:
                self.tb.add_image("samples", _as_rgb(grid), global_step=self.r.cur_step, dataformats="HWC")
            if self.first_grid is None:
                self.first_grid = images[:n]
            self.last_grid = images[:n]


def _as_rgb(grid):
    """A grid as [H, W, 3] (greyscale repeated), as TensorBoard shows images."""
    import numpy as np
    grid = grid[:, :, None] if grid.ndim == 2 else grid
    return np.repeat(grid, 3, axis=2) if grid.shape[2] == 1 else grid


def _tensorboard(mode, run_dir):
    """A SummaryWriter in the run folder: 'auto' when the tensorboard package is installed
    (the [tensorboard] extra), 'on' insists on it, 'off' writes none."""
    if mode == "off":
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if mode == "on":
            raise RunError("--tensorboard on needs the tensorboard package: pip install "
                           "'gan-refine[tensorboard]' (or use --tensorboard auto)") from None
        return None
    return SummaryWriter(log_dir=run_dir)
