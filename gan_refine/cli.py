"""`gan-refine`: command line -> RunConfig -> launch (each in one place).

    gan-refine --gen cifar10u.pkl --teacher edm --outdir runs/ --kimg 200

Every run gets a fresh numbered folder inside --outdir holding refine_options.json,
stats.jsonl (one line of statistics per generator update), sample grids (fixed seeds, before
and at each snapshot), network-snapshot-<kimg>.pkl (the input pickle's layout with G_ema and G
refined) and refine-state.pt (everything --resume needs). Ctrl-C or SIGTERM finishes the
current step, writes a snapshot and exits.

This module is the command line only; the run itself is gan_refine.training_loop.launch,
which the Python API calls too. On several processes:

    torchrun --standalone --nproc_per_node 8 -m gan_refine.cli --gen ... --batch 128
"""

import math

import click

from dataclasses import fields

from .config import (LOSSES, NORMALIZE, PRECISIONS, SIGMA_LAWS, TEACHER_MODES, RefineConfig,
                     PRESETS, RunConfig, field_default, field_help)

__all__ = ["main", "resolve_run_config"]


# RefineConfig fields set by an option of the same name (the rest are parsed specially).
_METHOD_OPTIONS = [f.name for f in fields(RefineConfig) if f.name not in ("betas", "label_probs", "gap_bins")]
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


_MISSING = object()


def _run_opt(flag, name, cli_default=_MISSING, **kw):
    """An option whose default and help are RunConfig's field `name`."""
    default = field_default(RunConfig, name) if cli_default is _MISSING else cli_default
    return click.option(flag, name, default=default, help=field_help(RunConfig, name), **kw)


def _method_opt(flag, name, **kw):
    """An option whose default and help are RefineConfig's field `name`."""
    return click.option(flag, name, default=field_default(RefineConfig, name),
                        help=field_help(RefineConfig, name), **kw)


_UNIT = click.FloatRange(0, 1, max_open=True)


@click.command(cls=_Command, context_settings=dict(show_default=True, max_content_width=110,
                                                   help_option_names=["-h", "--help"]))
@_run_opt("--gen", "gen", cli_default=None, type=str)
@click.option("--teacher", "teacher", multiple=True, default=(field_default(RunConfig, "teacher"),),
              show_default=True, help=field_help(RunConfig, "teacher") + " Give it again for several "
              "teachers: the generator then follows the weighted mixture of their denoisers.")
@_run_opt("--teacher-weights", "teacher_weights", type=str)
@_run_opt("--start-from", "gen_key", type=click.Choice(["G_ema", "G"]))
@_run_opt("--outdir", "outdir", type=click.Path(file_okay=False))
@_run_opt("--kimg", "kimg", type=float)
@_run_opt("--snap", "snap", type=float)
@_run_opt("--grid", "grid", type=click.IntRange(min=0))
@_run_opt("--resume", "resume", type=click.Path())
@_run_opt("--metrics", "metrics", cli_default="none", type=str)
@_run_opt("--metrics-ref", "metrics_ref", type=str)
@_run_opt("--metrics-num", "metrics_num", type=click.IntRange(min=2))
@_run_opt("--metrics-detector", "metrics_detector", type=str)
@_run_opt("--metrics-seeds", "metrics_seeds", type=str)
@click.option("--dry-run", "-n", "dry_run", is_flag=True,
              help="Check every option, print the resolved configuration as JSON and the run folder "
                   "it would create, and exit without loading networks or writing anything.")
@_method_opt("--batch", "batch", type=click.IntRange(min=1))
@_method_opt("--lr-gen", "lr_gen", type=_POS)
@_method_opt("--lr-fake", "lr_fake", type=_POS)
@_method_opt("--lr-gen-halflife", "lr_gen_halflife_kimg", type=click.FloatRange(min=0))
@_method_opt("--lr-rampup", "lr_rampup_kimg", type=click.FloatRange(min=0))
@_method_opt("--mapping-lr-mult", "mapping_lr_mult", type=_POS)
@_method_opt("--betas", "betas", type=(_UNIT, _UNIT))
@_method_opt("--adam-eps", "adam_eps", type=_POS)
@_method_opt("--fake-updates", "fake_updates", type=click.IntRange(min=1))
@_method_opt("--fake-warmup", "fake_warmup", type=click.IntRange(min=0))
@_method_opt("--noise-draws", "noise_draws", type=click.IntRange(min=1))
@_method_opt("--loss", "loss", type=click.Choice(LOSSES))
@_method_opt("--normalize", "normalize", type=click.Choice(NORMALIZE))
@_method_opt("--sid-alpha", "sid_alpha", type=float)
@_method_opt("--sigma-law", "sigma_law", type=click.Choice(SIGMA_LAWS))
@_method_opt("--p-mean", "P_mean", type=float)
@_method_opt("--p-std", "P_std", type=_POS)
@_method_opt("--sigma-min", "sigma_min", type=_POS)
@_method_opt("--sigma-max", "sigma_max", type=_POS)
@_method_opt("--rho", "rho", type=_POS)
@_method_opt("--t-max", "t_max", type=click.FloatRange(0, 1, min_open=True))
@_method_opt("--teacher-mode", "teacher_mode", type=click.Choice(TEACHER_MODES))
@_method_opt("--ema-kimg", "ema_kimg", type=click.FloatRange(min=0))
@_method_opt("--ema-rampup", "ema_rampup", type=click.FloatRange(min=0))
@_method_opt("--grad-clip", "grad_clip", type=click.FloatRange(min=0))
@_method_opt("--precision", "precision", type=click.Choice(PRECISIONS))
@_method_opt("--force-fp32", "force_fp32", is_flag=True)
@_method_opt("--device", "device", type=str)
@_method_opt("--seed", "seed", type=click.IntRange(0, 2 ** 63 - 1))
@_method_opt("--label-probs", "label_probs", type=str)
@_method_opt("--update-order", "update_order", type=click.Choice(RefineConfig.UPDATE_ORDERS))
@_method_opt("--overlap", "overlap", is_flag=True)
@_method_opt("--augment", "augment", type=click.FloatRange(0, 1))
@_run_opt("--data", "data", type=str)
@_method_opt("--data-weight", "data_weight", type=click.FloatRange(min=0))
@_method_opt("--data-d-weight", "data_d_weight", type=click.FloatRange(min=0, min_open=True))
@_run_opt("--dist-timeout", "dist_timeout", type=_POS)
@_run_opt("--preset", "preset", type=click.Choice(sorted(PRESETS)))
@_run_opt("--tensorboard", "tensorboard", type=click.Choice(["auto", "on", "off"]))
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
        raise click.ClickException("aborted by Ctrl-C; nothing was written for the unfinished step, "
                                   "and the snapshots written before it are intact") from None


def options_markdown():
    """The options table of docs/cli.md, made from the command itself (its help and defaults
    come from the config fields), so the docs cannot drift from --help."""
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for p in main.params:
        if not isinstance(p, click.Option) or p.name == "help":
            continue
        flags = ", ".join(f"`{o}`" for o in p.opts + p.secondary_opts)
        if p.is_flag:
            default = "off"
        elif p.default is None or p.default == ():
            default = ""
        elif isinstance(p.default, (tuple, list)):
            default = " ".join(str(v) for v in p.default)
        else:
            default = str(p.default)
        text = " ".join((p.help or "").split()).replace("|", "\\|")
        rows.append(f"| {flags} | {f'`{default}`' if default else ''} | {text} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------- config

def _parse_probs(text):
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"--label-probs must be comma-separated numbers, e.g. 0.1,0.9; got {text!r}")


def _parse_weights(text, n):
    if text is None:
        return None
    try:
        weights = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"--teacher-weights must be comma-separated numbers, one per --teacher; got {text!r}")
    if len(weights) != n:
        _fail(f"--teacher-weights has {len(weights)} weights for {n} --teacher option(s); give one each")
    if any(not (w >= 0 and math.isfinite(w)) for w in weights) or not sum(weights) > 0:
        _fail(f"--teacher-weights must be non-negative with a positive sum; got {text}")
    return weights


def _check_seeds(text):
    if text is None:
        return None
    from .seeds import parse_seeds
    try:
        parse_seeds(text)
    except ValueError as err:
        _fail(f"--metrics-seeds: {err}")
    return text


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
    # Precedence: the command line, then the resumed run's own settings, then the preset, then
    # the defaults; `sources` records which one each value came from.
    preset_name = opts.get("preset") if "preset" in explicit else saved_run.get("preset")
    preset = PRESETS[preset_name]["method"] if preset_name else {}
    method, sources = {}, {}
    for name in _METHOD_OPTIONS + ["betas"]:
        if name in explicit:
            method[name], sources[name] = opts[name], "command line"
        elif name in saved_method:
            method[name], sources[name] = saved_method[name], "resumed state"
        elif name in preset:
            method[name], sources[name] = preset[name], f"preset {preset_name}"
        else:
            method[name], sources[name] = opts[name], "default"
    method["betas"] = list(method["betas"])
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
    if state is not None:  # before any network is loaded
        from .training_loop import RunError, check_resume_length
        try:
            check_resume_length(state, kimg, refine.batch)
        except RunError as err:
            _fail(err)
    metrics, alias_num = _parse_metrics(pick("metrics"))
    metrics_num = pick("metrics_num") if ("metrics_num" in explicit or alias_num is None) else alias_num
    teachers = list(opts["teacher"])
    weights = _parse_weights(opts.get("teacher_weights"), len(teachers))
    run = RunConfig(gen=gen, teacher=teachers[0], more_teachers=teachers[1:], teacher_weights=weights,
                    gen_key=pick("gen_key"),
                    outdir=pick("outdir"), kimg=kimg, snap=snap, grid=int(pick("grid")),
                    resume=opts.get("resume"), metrics=metrics,
                    metrics_ref=pick("metrics_ref"), metrics_num=metrics_num,
                    metrics_detector=pick("metrics_detector"), dist_timeout=float(opts["dist_timeout"]),
                    tensorboard=opts["tensorboard"], metrics_seeds=_check_seeds(pick("metrics_seeds")),
                    preset=preset_name, refine=refine, sources=sources, data=pick("data"))
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
    more = saved_run.get("more_teacher_names") or []
    hint = " ".join(f"--{k} {shlex.quote(str(stored[k]))}" for k in missing if stored.get(k))
    if "teacher" in missing and more:
        hint += "".join(f" --teacher {shlex.quote(str(t))}" for t in more)
        stored["teacher"] = ", ".join([str(stored["teacher"])] + [str(t) for t in more])
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
