"""`gan-refine`: command line -> RunConfig -> launch (each in one place).

    gan-refine --gen cifar10u.pkl --teacher edm --outdir runs/ --kimg 200

Every run gets a fresh numbered folder inside --outdir holding refine_options.json,
stats.jsonl (one line of statistics per generator update), sample grids (fixed seeds, before
and at each snapshot), network-snapshot-<step>.pkl (the input pickle's layout with G_ema and G
refined) and refine-state.pt (everything --resume needs). Ctrl-C or SIGTERM finishes the
current step, writes a snapshot and exits.

This module is the command line only; the run itself is gan_refine.training_loop.launch,
which the Python API calls too. On several processes:

    torchrun --standalone --nproc_per_node 8 -m gan_refine.cli --gen ... --batch 128
"""

import math

import click

from .config import (LOSSES, NORMALIZE, PRECISIONS, SIGMA_LAWS, TEACHER_MODES, RefineConfig,
                     RunConfig)

__all__ = ["main", "resolve_run_config"]

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

class _Command(click.Command):
    """Bad option values, too, end in one line (click would add the usage text)."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as err:
            raise click.ClickException(f"{err.format_message()} (all options: {ctx.command_path} --help)") from None


@click.command(cls=_Command, context_settings=dict(show_default=True, max_content_width=110,
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
              help="Evaluate G_ema before refining and at every snapshot: comma-separated fid, kid, pr "
                   "(or fid50k_full, kid50k_full, pr50k3_full); or none.")
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
@click.option("--seed", type=click.IntRange(0, 2 ** 63 - 1), default=_R.seed, help="Seed of every random draw.")
@click.option("--label-probs", type=str, default=None,
              help="Comma-separated class weights for conditional generators (default: uniform).")
@click.option("--dist-timeout", type=_POS, default=_RUN.dist_timeout,
              help="Seconds a process waits for the others (torchrun runs) before it gives up with an error.")
@click.pass_context
def main(ctx, **opts):
    """Refine a GAN generator with Diff-Instruct against a diffusion teacher."""
    from .training_loop import RunError, launch
    explicit = {k for k in opts if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    run, state = resolve_run_config(opts, explicit)
    try:
        launch(run, state=state, dry_run=opts["dry_run"])
    except RunError as err:
        _fail(err)
    except KeyboardInterrupt:
        raise click.ClickException("aborted by a second Ctrl-C; no snapshot was written for the "
                                   "unfinished step (the last one written is intact)") from None


# ---------------------------------------------------------------------------- config

def _parse_probs(text):
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"--label-probs must be comma-separated numbers, e.g. 0.1,0.9; got {text!r}")


def _check_device(device):
    import torch
    if device == "auto":
        return
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        _fail(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N")


def _finite_positive(value, option, meaning):
    if not (math.isfinite(value) and value > 0):
        _fail(f"--{option} must be a finite number greater than 0 ({meaning}); got {value}")


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
        _check_resume_sources(opts, explicit, saved_run)
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

    _check_device(refine.device)

    def pick(key):  # options given again win; the rest come from the interrupted run
        if key in explicit or key not in saved_run:
            return opts[key]
        return saved_run[key]
    gen = opts.get("gen")
    if not gen:
        _fail("--gen is required: give the generator network pickle (path, URL or name)")
    kimg, snap = float(pick("kimg")), float(pick("snap"))
    _finite_positive(kimg, "kimg", "the refinement length in thousands of generated images, e.g. --kimg 200")
    _finite_positive(snap, "snap", "the snapshot interval in kimg")
    if state is not None:
        from .refiner import steps_for_kimg
        done = int(state.get("step", 0))
        if steps_for_kimg(kimg, refine.batch) <= done:
            _fail(f"--resume: that run already made {done} steps ({done * refine.batch / 1000:g} "
                  f"kimg); raise --kimg above {done * refine.batch / 1000:g} to continue it")
    metrics, alias_num = _parse_metrics(pick("metrics"))
    metrics_num = pick("metrics_num") if ("metrics_num" in explicit or alias_num is None) else alias_num
    run = RunConfig(gen=gen, teacher=opts["teacher"], gen_key=pick("gen_key"),
                    outdir=pick("outdir"), kimg=kimg, snap=snap, grid=int(pick("grid")),
                    resume=opts.get("resume"), metrics=metrics,
                    metrics_ref=pick("metrics_ref"), metrics_num=metrics_num,
                    metrics_detector=pick("metrics_detector"), dist_timeout=float(opts["dist_timeout"]),
                    refine=refine)
    return run, state


def _check_resume_sources(opts, explicit, saved_run):
    """A state file is data: resuming loads only the networks named on this command line.

    Loading a network pickle runs the code inside it, so the sources stored in the state are
    shown, never followed.
    """
    missing = [k for k in ("gen", "teacher") if k not in explicit or not opts.get(k)]
    if not missing:
        return
    import shlex
    stored = {k: saved_run.get(f"{k}_name") or saved_run.get(k) for k in ("gen", "teacher")}
    hint = " ".join(f"--{k} {shlex.quote(str(stored[k]))}" for k in missing if stored.get(k))
    shown = "; ".join(f"{k} {stored[k]}" for k in ("gen", "teacher") if stored.get(k)) or "none recorded"
    _fail(f"--resume needs {' and '.join('--' + k for k in missing)} again: resuming loads only "
          f"network pickles named on the command line, because loading one runs the code inside "
          f"it (the state names {shown}; if you trust them, add {hint or 'the pickles'})")


def _parse_metrics(value):
    """'fid,kid' or 'fid50k_full' (or a saved list) -> (['fid', 'kid'], image count the names
    imply or None); 'none' or '' -> ([], None)."""
    from .metrics import ALIASES, resolve_metric_names
    from .metrics.compute import METRICS
    items = value if isinstance(value, (list, tuple)) else str(value or "").split(",")
    names = [m.strip().lower() for m in items if m.strip() and m.strip().lower() != "none"]
    bad = [m for m in names if m not in METRICS and m not in ALIASES]
    if bad:
        _fail(f"--metrics: unknown metric(s) {', '.join(bad)}; choose from "
              f"{', '.join(list(METRICS) + list(ALIASES))} (comma-separated) or none")
    if not names:
        return [], None
    try:
        metrics, num, _ = resolve_metric_names(names)
    except ValueError as err:
        _fail(f"--metrics: {err}")
    return list(dict.fromkeys(metrics)), num


if __name__ == "__main__":  # pragma: no cover
    main()
