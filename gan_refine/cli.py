"""`gan-refine`: command line -> RunConfig -> launch (each in one place).

    gan-refine --gen cifar10u.pkl --teacher edm --outdir runs/ --kimg 200

Every run gets a fresh numbered folder inside --outdir holding refine_options.json,
stats.jsonl (one line of statistics per generator update), sample grids (fixed seeds, before
and at each snapshot), network-snapshot-<step>.pkl (the input pickle's layout with G_ema and G
refined) and refine-state.pt (everything --resume needs). Ctrl-C finishes the current step,
writes a snapshot and exits.
"""

import json
import os
import re
import signal
import sys
import threading
import time

import click

from .config import (LOSSES, NORMALIZE, PRECISIONS, SIGMA_LAWS, TEACHER_MODES, RefineConfig,
                     RunConfig)

__all__ = ["main", "launch", "resolve_run_config"]

_R = RefineConfig()  # defaults, defined once in config.py
_RUN = RunConfig()

# CLI option name -> RefineConfig field, for the method settings.
_METHOD_OPTIONS = {
    "batch": "batch", "lr_gen": "lr_gen", "lr_fake": "lr_fake", "adam_eps": "adam_eps",
    "fake_updates": "fake_updates", "fake_warmup": "fake_warmup", "loss": "loss", "normalize": "normalize",
    "sid_alpha": "sid_alpha", "sigma_law": "sigma_law", "p_mean": "P_mean", "p_std": "P_std",
    "sigma_min": "sigma_min", "sigma_max": "sigma_max", "rho": "rho", "t_max": "t_max",
    "teacher_mode": "teacher_mode", "ema_kimg": "ema_kimg", "ema_rampup": "ema_rampup",
    "grad_clip": "grad_clip", "precision": "precision", "device": "device", "seed": "seed",
}
_POS = click.FloatRange(min=0, min_open=True)


def _fail(msg):
    raise click.ClickException(" ".join(str(msg).split()))  # always one line


# ---------------------------------------------------------------------------- command line

@click.command(context_settings=dict(show_default=True, max_content_width=110,
                                     help_option_names=["-h", "--help"]))
@click.option("--gen", type=str, default=None,
              help="Generator network pickle: path, URL or name from pretrained_urls.json.  [required unless --resume]")
@click.option("--teacher", type=str, default=_RUN.teacher,
              help="Diffusion teacher pickle: path, URL, name, or a family/data-set word ('edm', "
                   "'digits') to pick the table's teacher matching the generator.")
@click.option("--start-from", "gen_key", type=click.Choice(["G_ema", "G"]), default=_RUN.gen_key,
              help="Which generator of the pickle to refine.")
@click.option("--outdir", type=click.Path(file_okay=False), default=_RUN.outdir,
              help="Where to create the numbered run folder.")
@click.option("--kimg", type=float, default=_RUN.kimg, help="Refinement length in thousands of generated images.")
@click.option("--snap", type=float, default=_RUN.snap, help="Snapshot interval in thousands of images.")
@click.option("--grid", type=click.IntRange(min=0), default=_RUN.grid, help="Sample grid side (grid x grid images); 0 = no grids.")
@click.option("--resume", type=click.Path(), default=None,
              help="Continue from a refine-state.pt (or the run folder holding it); unset options come from it.")
@click.option("--metrics", type=str, default="none",
              help="Evaluate G_ema before refining and at every snapshot: comma-separated fid, kid, pr; or none.")
@click.option("--metrics-ref", type=str, default=_RUN.metrics_ref,
              help="Reference for --metrics: statistics .npz (mu/sigma), image folder or array, URL, or a "
                   "'fid-ref' name; auto = the table's statistics for the generator's data set.")
@click.option("--metrics-num", type=click.IntRange(min=2), default=None,
              help="Generated images per evaluation.  [default: the reference's protocol (2,000 for digits), else 50,000]")
@click.option("--metrics-detector", type=str, default=_RUN.metrics_detector,
              help="Feature network for --metrics; auto = the reference's own, else Inception-v3.")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration as JSON and exit.")
@click.option("--batch", type=click.IntRange(min=1), default=_R.batch, help="Images per generator update.")
@click.option("--lr-gen", type=_POS, default=_R.lr_gen, help="Generator learning rate (Adam).")
@click.option("--lr-fake", type=_POS, default=_R.lr_fake, help="Fake-score learning rate (Adam).")
@click.option("--betas", type=(click.FloatRange(0, 1, max_open=True), click.FloatRange(0, 1, max_open=True)),
              default=_R.betas, help="Adam betas for both networks.")
@click.option("--adam-eps", type=_POS, default=_R.adam_eps, help="Adam epsilon.")
@click.option("--fake-updates", type=click.IntRange(min=1), default=_R.fake_updates,
              help="Fake-score updates per generator update.")
@click.option("--fake-warmup", type=click.IntRange(min=0), default=_R.fake_warmup,
              help="Extra fake-score updates on the starting generator's samples before the first generator update.")
@click.option("--loss", type=click.Choice(LOSSES), default=_R.loss, help="Generator loss: Diff-Instruct IKL or SiD.")
@click.option("--normalize", type=click.Choice(NORMALIZE), default=_R.normalize,
              help="'dmd' divides the IKL gradient by mean|x0 - D_T| per sample.")
@click.option("--sid-alpha", type=float, default=_R.sid_alpha, help="SiD's alpha (with --loss sid).")
@click.option("--sigma-law", type=click.Choice(SIGMA_LAWS), default=_R.sigma_law, help="Noise-level law.")
@click.option("--p-mean", type=float, default=_R.P_mean, help="Log-normal law: mean of ln(sigma).")
@click.option("--p-std", type=_POS, default=_R.P_std, help="Log-normal law: std of ln(sigma).")
@click.option("--sigma-min", type=_POS, default=_R.sigma_min, help="Karras-uniform law: smallest sigma.")
@click.option("--sigma-max", type=_POS, default=_R.sigma_max, help="Karras-uniform law: largest sigma.")
@click.option("--rho", type=_POS, default=_R.rho, help="Karras-uniform law: schedule exponent.")
@click.option("--t-max", type=click.FloatRange(0, 1, min_open=True), default=_R.t_max,
              help="Karras-uniform law: fraction of the schedule used.")
@click.option("--teacher-mode", type=click.Choice(TEACHER_MODES), default=_R.teacher_mode,
              help="'eval', or 'train' (teacher and fake score share one dropout mask).")
@click.option("--ema-kimg", type=click.FloatRange(min=0), default=_R.ema_kimg, help="Generator EMA half-life in kimg.")
@click.option("--ema-rampup", type=click.FloatRange(min=0), default=_R.ema_rampup,
              help="EMA ramp-up ratio; 0 disables.")
@click.option("--grad-clip", type=click.FloatRange(min=0), default=_R.grad_clip,
              help="Clip gradients to this L2 norm; 0 disables.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=_R.precision,
              help="fp32; tf32, bf16 and fp16 (with loss scaling) need CUDA.")
@click.option("--device", type=str, default=_R.device, help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda:0', ...")
@click.option("--seed", type=int, default=_R.seed, help="Seed of every random draw.")
@click.option("--label-probs", type=str, default=None,
              help="Comma-separated class weights for conditional generators (default: uniform).")
@click.pass_context
def main(ctx, **opts):
    """Refine a GAN generator with Diff-Instruct against a diffusion teacher."""
    explicit = {k for k in opts if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    run, state = resolve_run_config(opts, explicit)
    launch(run, state=state, dry_run=opts["dry_run"])


# ---------------------------------------------------------------------------- config

def _parse_probs(text):
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"--label-probs must be comma-separated numbers, e.g. 0.1,0.9; got {text!r}")


def resolve_run_config(opts, explicit=()):
    """Turn parsed options into a RunConfig (and the resume state, if any); ClickException on
    anything a person must fix."""
    from .snapshot import load_state
    state = None
    saved_method, saved_run = {}, {}
    if opts.get("resume"):
        try:
            state = load_state(opts["resume"])
        except (FileNotFoundError, ValueError) as err:
            _fail(f"--resume: {err}")
        saved_method = state.get("config", {})
        saved_run = state.get("run", {})
    method = {}
    for opt, name in _METHOD_OPTIONS.items():
        method[name] = saved_method[name] if (name in saved_method and opt not in explicit) else opts[opt]
    method["betas"] = saved_method["betas"] if ("betas" in saved_method and "betas" not in explicit) \
        else list(opts["betas"])
    probs = _parse_probs(opts.get("label_probs"))
    method["label_probs"] = saved_method.get("label_probs") if (probs is None and saved_method) else probs
    if "gap_bins" in saved_method:
        method["gap_bins"] = saved_method["gap_bins"]
    try:
        refine = RefineConfig(**method)
    except ValueError as err:
        _fail(err)

    def pick(key):
        if key in explicit or key not in saved_run:
            return opts[key]
        return saved_run[key]
    gen = opts.get("gen") or saved_run.get("gen")
    if not gen:
        _fail("--gen is required: give the generator network pickle (path, URL or name)")
    if not opts["kimg"] > 0:
        _fail(f"--kimg must be greater than 0 (it is the refinement length in thousands of "
              f"generated images, e.g. --kimg 200); got {opts['kimg']}")
    if not opts["snap"] > 0:
        _fail(f"--snap must be greater than 0 (snapshot interval in kimg); got {opts['snap']}")
    metrics = _parse_metrics(pick("metrics"))
    run = RunConfig(gen=gen, teacher=pick("teacher"), gen_key=pick("gen_key"),
                    outdir=opts["outdir"], kimg=float(opts["kimg"]), snap=float(opts["snap"]),
                    grid=int(opts["grid"]), resume=opts.get("resume"), metrics=metrics,
                    metrics_ref=pick("metrics_ref"), metrics_num=pick("metrics_num"),
                    metrics_detector=pick("metrics_detector"), refine=refine)
    return run, state


def _parse_metrics(value):
    """'fid,kid' (or a saved list) -> ['fid', 'kid']; 'none' or '' -> []."""
    from .metrics.compute import METRICS
    items = value if isinstance(value, (list, tuple)) else str(value or "").split(",")
    names = [m.strip().lower() for m in items if m.strip() and m.strip().lower() != "none"]
    bad = [m for m in names if m not in METRICS]
    if bad:
        _fail(f"--metrics: unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRICS)} "
              f"(comma-separated) or none")
    return list(dict.fromkeys(names))


def _resolve_source(src, what):
    """Name -> URL or path, checked; one-line error for unknown names, missing files, folders."""
    from .pickles import resolve_source
    try:
        return resolve_source(src)
    except FileNotFoundError:
        _fail(f"--{what}: no such file: {os.fspath(src)} (give a path, a URL or a name from pretrained_urls.json)")
    except (OSError, ValueError) as err:
        _fail(f"--{what}: {err}")


def _load(target, what):
    from .pickles import load_network_pkl
    try:
        return load_network_pkl(target)
    except (OSError, ValueError) as err:
        _fail(f"--{what}: {err}")


def _generator_adapter(data, gen_key):
    from .adapters import as_generator
    try:
        return as_generator(data, which=gen_key)
    except (TypeError, ValueError) as err:
        _fail(f"--gen: {err}")


def _pick_teacher(gen, selector):
    from . import pretrained
    try:
        return pretrained.find_teacher(selector, gen.img_resolution, gen.img_channels, gen.c_dim)
    except ValueError as err:
        _fail(f"--teacher {selector}: {err}")


def _next_run_dir(outdir, desc):
    os.makedirs(outdir, exist_ok=True)
    ids = [int(m.group(1)) for m in (re.match(r"^(\d+)-", d) for d in os.listdir(outdir)) if m]
    run_id = max(ids, default=-1) + 1
    while True:  # another process may take the same number at the same moment
        path = os.path.join(outdir, f"{run_id:05d}-{desc}")
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            run_id += 1


def _stem(src):
    base = os.path.basename(src.split("?")[0].rstrip("/")) or "gen"
    base = re.sub(r"\.(pkl|pickle)$", "", base)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)[:40]


# ---------------------------------------------------------------------------- launch

class _Interrupt:
    """First Ctrl-C: finish the step, snapshot, exit. A second one aborts at once."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        click.echo("\nInterrupt received: finishing this step and writing a snapshot "
                   "(press Ctrl-C again to abort without one).", err=True)

    def install(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self)
        return self

    def restore(self):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


def launch(run, state=None, dry_run=False, progress=True):
    """Load the networks, refine, and write every output into a fresh run folder."""
    from .adapters import IncompatibleModelsError
    from .refiner import NonFiniteError, Refiner, steps_for_kimg

    gen_target = _resolve_source(run.gen, "gen")
    gen_data = None
    teacher_src = run.teacher
    from . import pretrained
    # A family or data-set word ('edm', 'digits') means: the table's teacher that fits --gen.
    if not os.path.exists(teacher_src) and teacher_src.lower() in pretrained.teacher_selectors():
        gen_data = _load(gen_target, "gen")
        teacher_src = _pick_teacher(_generator_adapter(gen_data, run.gen_key), teacher_src.lower())
    teacher_target = _resolve_source(teacher_src, "teacher")
    steps = steps_for_kimg(run.kimg, run.refine.batch)
    snap_steps = max(1, int(round(run.snap * 1000 / run.refine.batch)))
    evaluation = _resolve_metrics(run, gen_target)
    resolved = dict(run.to_dict(), resolved=dict(gen=gen_target, teacher=teacher_target,
                                                 teacher_name=teacher_src, steps=steps,
                                                 snap_steps=snap_steps, metrics=evaluation))
    if dry_run:
        click.echo(json.dumps(resolved, indent=2, sort_keys=True))
        return None

    if gen_data is None:
        gen_data = _load(gen_target, "gen")
    teacher_data = _load(teacher_target, "teacher")
    try:
        refiner = Refiner(gen_data, teacher_data, run.refine, gen_key=run.gen_key)
    except IncompatibleModelsError as err:
        _fail(err)
    except (TypeError, ValueError) as err:
        _fail(err)
    probs = run.refine.label_probs
    if probs is not None and len(probs) != refiner.G.c_dim:
        _fail(f"--label-probs has {len(probs)} weights but the generator has {refiner.G.c_dim} classes")
    if state is not None:
        try:
            refiner.load_state_dict(state)
        except (ValueError, RuntimeError, KeyError) as err:
            _fail(f"--resume: {str(err).splitlines()[0]}")
        if refiner.cur_step >= steps:
            _fail(f"--resume: that run already made {refiner.cur_step} steps ({refiner.cur_nimg / 1000:g} kimg); "
                  f"raise --kimg above {refiner.cur_nimg / 1000:g} to continue it")

    from . import __version__
    import torch
    from .snapshot import atomic_write_json
    run_dir = _next_run_dir(run.outdir, f"{_stem(run.gen)}-{run.refine.loss}-kimg{run.kimg:g}")
    resolved["resolved"].update(run_dir=run_dir, device=str(refiner.device),
                                start_step=refiner.cur_step, gan_refine=__version__,
                                torch=torch.__version__)
    atomic_write_json(os.path.join(run_dir, "refine_options.json"), resolved)
    click.echo(f"Refining {run.gen} against {teacher_src} on {refiner.device}; "
               f"{steps} steps of {run.refine.batch} images; outputs in {run_dir}", err=True)

    def portable(target):  # so --resume works from any working directory
        return target if "://" in target else os.path.abspath(target)
    run_info = dict(gen=portable(gen_target), teacher=portable(teacher_target), gen_key=run.gen_key,
                    metrics=run.metrics, metrics_ref=run.metrics_ref, metrics_num=run.metrics_num,
                    metrics_detector=run.metrics_detector)
    writer = _Outputs(refiner, run_dir, run, run_info, evaluation)
    try:
        writer.grid("init")
        writer.evaluate(None)
    except NonFiniteError as err:
        _fail(err)

    stop = _Interrupt().install()
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, initial=refiner.cur_step, unit="step", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    t_start = time.time()
    last_snap = None
    try:
        with open(os.path.join(run_dir, "stats.jsonl"), "a", encoding="utf-8") as log:
            while refiner.cur_step < steps:
                try:  # a NaN in the step or in the snapshot's samples ends the run the same way
                    stats = refiner.step()
                    stats["time"] = time.time() - t_start
                    log.write(json.dumps(stats) + "\n")
                    log.flush()
                    bar.update(1)
                    bar.set_postfix({"kimg": f"{stats['kimg']:.4g}", "gap": f"{stats.get('gap/mean', 0):.3g}"},
                                    refresh=False)
                    done = refiner.cur_step >= steps
                    if done or stop.requested or refiner.cur_step % snap_steps == 0:
                        last_snap = writer.snapshot()
                except NonFiniteError as err:
                    bar.close()
                    where = f"the last good snapshot is {last_snap}" if last_snap else "no snapshot was written"
                    _fail(f"{err}; {where}")
                if stop.requested:
                    break
    finally:
        bar.close()
        stop.restore()
    writer.before_after()
    if stop.requested:
        click.echo(f"Interrupted after step {refiner.cur_step}: wrote {last_snap}; continue with "
                   f"--resume {os.path.join(run_dir, 'refine-state.pt')}", err=True)
    else:
        click.echo(f"Done: {last_snap}", err=True)
    writer.summary()
    return run_dir


def _resolve_metrics(run, gen_target):
    """The evaluation plan of --metrics (reference, detector, sample count), checked before any
    work starts; None without --metrics."""
    if not run.metrics:
        return None
    from . import pretrained
    from .metrics.detectors import INCEPTION
    ref, ref_entry = run.metrics_ref, None
    if ref == "auto":
        gen_entry = pretrained.entry_for(run.gen) or pretrained.entry_for(gen_target)
        name = gen_entry and pretrained.find_fid_ref(gen_entry["dataset"], gen_entry["resolution"])
        if not name:
            what = (f"data set {gen_entry['dataset']!r} at {gen_entry['resolution']} px" if gen_entry
                    else f"{run.gen} (not a model in the table)")
            _fail(f"--metrics-ref auto: the table has no reference statistics for {what}; give "
                  f"--metrics-ref (a statistics .npz with mu/sigma, an image folder or an array)")
        ref = name
    if not os.path.exists(ref):
        ref_entry = pretrained.lookup(ref)
        if ref_entry is not None and ref_entry["role"] != "fid-ref":
            _fail(f"--metrics-ref {ref}: that table entry is a {ref_entry['role']}, not reference statistics")
        if ref_entry is None and "://" not in ref:
            _fail(f"--metrics-ref: no such file or folder: {ref} (give a statistics .npz, an image "
                  f"folder or array, a URL, or a 'fid-ref' name from pretrained_urls.json)")
    from .metrics.compute import check_reference, load_ref_stats
    try:
        ref_is_stats = check_reference(run.metrics, ref)
    except ValueError as err:
        _fail(f"--metrics {','.join(run.metrics)}: {err}; give image files as --metrics-ref")
    detector = run.metrics_detector
    if detector == "auto":
        recorded = None
        if ref_entry is None and ref_is_stats and os.path.isfile(ref):
            try:  # a statistics file gan_refine wrote names its detector
                recorded = load_ref_stats(ref).get("detector")
            except (OSError, ValueError):
                pass  # compute_metrics reports an unreadable file in one line
        detector = (ref_entry or {}).get("detector") or recorded or INCEPTION
    num = run.metrics_num or (ref_entry or {}).get("eval_num") or 50000
    return dict(metrics=list(run.metrics), ref=ref, detector=detector, num=int(num))


class _Outputs:
    """Sample grids, refined pickles and state files of one run folder."""

    GRID_SEED = 0  # fixed, so every grid of every run shows the same latents

    def __init__(self, refiner, run_dir, run, run_info, evaluation=None):
        self.r, self.dir, self.run, self.run_info = refiner, run_dir, run, run_info
        self.evaluation = evaluation
        self.ref = None            # the --metrics reference, its image features computed once
        self.results = []          # (step, metrics dict) of every evaluation of this run
        self.first_grid = None     # the images of samples-init.png, for the before/after grid
        self.last_grid = None

    def _checked_samples(self, n):
        from .refiner import NonFiniteError
        images = self.r.sample(n, seed=self.GRID_SEED)
        if not images.isfinite().all():
            raise NonFiniteError(f"the refined generator makes NaN/inf images at step {self.r.cur_step}; "
                                 f"not writing this snapshot (lower --lr-gen or add --grad-clip)")
        return images

    def grid(self, tag):
        from .images import save_image_grid
        n = self.run.grid ** 2
        images = self._checked_samples(max(n, 4))
        if n:
            save_image_grid(images[:n], os.path.join(self.dir, f"samples-{tag}.png"), cols=self.run.grid)
            if self.first_grid is None:
                self.first_grid = images[:n]
            self.last_grid = images[:n]

    def before_after(self):
        """samples-before-after.png: the first grid of this run beside its last (same latents)."""
        from .images import save_image_pair
        if self.first_grid is not None and self.r.cur_step > 0:
            scale = max(1, 64 // self.first_grid.shape[-1])  # digits are 16 px: show them at 64
            save_image_pair(self.first_grid, self.last_grid,
                            os.path.join(self.dir, "samples-before-after.png"), cols=self.run.grid,
                            scale=scale)

    def evaluate(self, pkl):
        """Compute --metrics for G_ema now; append them to metrics.jsonl and print one line."""
        if self.evaluation is None:
            return None
        from .metrics.compute import (compute_feature_stats, compute_metrics, is_stats_source,
                                      open_images)
        from .metrics.detectors import get_detector
        ev = self.evaluation
        try:
            if self.ref is None:
                self.ref = ev["ref"]
                if not is_stats_source(self.ref):  # reference images: run the detector once
                    self.ref = compute_feature_stats(open_images(self.ref),
                                                     get_detector(ev["detector"], device=self.r.device),
                                                     capture_all=True)
            res = compute_metrics(gen=self.r.refined_generator(), ref=self.ref, metrics=ev["metrics"],
                                  num=ev["num"], detector=ev["detector"], device=self.r.device, seed=0)
        except (OSError, ValueError, RuntimeError) as err:
            _fail(f"--metrics: {str(err).splitlines()[0]}")
        figures = {k: res[k] for k in ("fid", "kid", "kid_std", "precision", "recall") if k in res}
        line = dict(step=self.r.cur_step, kimg=self.r.cur_nimg / 1000, snapshot_pkl=pkl,
                    results=figures, num=res.get("num"), detector=res.get("detector"),
                    ref=ev["ref"], seconds=res.get("seconds"))
        with open(os.path.join(self.dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        self.results.append((self.r.cur_step, figures))
        shown = "  ".join(f"{k} {v:.4g}" for k, v in figures.items())
        from tqdm.auto import tqdm
        # tqdm.write keeps the line apart from a progress bar that is being drawn.
        tqdm.write(f"step {self.r.cur_step}: {shown}  ({res.get('num')} images, detector "
                   f"{res.get('detector')})", file=sys.stderr)
        return figures

    def summary(self):
        """One line comparing the first and last evaluation of this run."""
        if len(self.results) < 2:
            return
        (s0, first), (s1, last) = self.results[0], self.results[-1]
        parts = [f"{k.upper()} {first[k]:.4g} -> {last[k]:.4g}" for k in first if k in last and k != "kid_std"]
        click.echo(f"G_ema at step {s0} vs step {s1}: " + ", ".join(parts), err=True)

    def snapshot(self):
        from .snapshot import save_state
        step = self.r.cur_step
        self.grid(f"{step:06d}")
        pkl = os.path.join(self.dir, f"network-snapshot-{step:06d}.pkl")
        self.r.export_pickle(pkl, run=dict(self.run_info, kimg_target=self.run.kimg))
        state = dict(self.r.state_dict(), run=self.run_info)
        save_state(os.path.join(self.dir, "refine-state.pt"), state)
        self.evaluate(os.path.basename(pkl))
        return pkl


if __name__ == "__main__":  # pragma: no cover
    main()
