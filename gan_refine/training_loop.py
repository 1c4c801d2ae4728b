"""The refinement run: load, refine, and write every output of one run folder.

`launch(run)` is what `gan-refine` calls and what a Python user calls for the same run with
the same outputs (snapshots, resume state, sample grids, stats.jsonl, metrics.jsonl):

    from gan_refine.config import RunConfig, RefineConfig
    from gan_refine.training_loop import launch
    launch(RunConfig(gen="network.pkl", teacher="edm", kimg=50, refine=RefineConfig(batch=64)))
    launch(run, generator=G, teacher=net)     # in-memory networks instead of pickle names

Under torchrun every process calls launch() with the same options; the batch is split
between them and rank 0 writes the outputs (see gan_refine.distributed). Errors a person must
fix raise RunError, whose message is one line; the CLI prints it and exits with status 1.
"""

import json
import math
import os
import re
import signal
import sys
import threading
import time

from . import distributed
from .run_outputs import Console, RunError, RunOutputs, snapshot_bytes

__all__ = ["launch", "RunError", "StopRequest", "resolve_metrics"]


# ---------------------------------------------------------------------------- sources

def _resolve_source(src, what):
    """Name -> URL or path, checked; one-line error for unknown names, missing files, folders."""
    from .pickles import resolve_source
    try:
        return resolve_source(src)
    except FileNotFoundError:
        raise RunError(f"--{what}: no such file: {os.fspath(src)} (give a path, a URL or a name "
                       f"from pretrained_urls.json)") from None
    except (OSError, ValueError) as err:
        raise RunError(f"--{what}: {err}") from None


def _load(target, what, dist):
    """Load a network pickle; rank 0 first, so only it downloads into the cache."""
    from .pickles import load_network_pkl
    try:
        with dist.main_first(f"loading --{what}"):
            return load_network_pkl(target)
    except (OSError, ValueError) as err:
        raise RunError(f"--{what}: {err}") from None


def _generator_adapter(data, gen_key):
    from .adapters import as_generator
    try:
        return as_generator(data, which=gen_key)
    except (TypeError, ValueError) as err:
        raise RunError(f"--gen: {err}") from None


def _pick_teacher(shape, selector):
    from . import pretrained
    try:
        return pretrained.find_teacher(selector, *shape)
    except ValueError as err:
        raise RunError(f"--teacher {selector}: {err}") from None


def _adapter_shape(gen):
    return int(gen.img_resolution), int(gen.img_channels), int(gen.c_dim)


def _table_shape(name, target):
    """(resolution, channels, labels) of a table generator, without loading it; None if unknown."""
    from . import pretrained
    entry = pretrained.entry_for(name) or pretrained.entry_for(target)
    if not entry or entry.get("role") != "generator":
        return None
    try:
        return int(entry["resolution"]), int(entry["channels"]), int(entry.get("label_dim") or 0)
    except (KeyError, TypeError, ValueError):
        return None


def _next_run_id(outdir):
    names = os.listdir(outdir) if os.path.isdir(outdir) else []
    ids = [int(m.group(1)) for m in (re.match(r"^(\d+)-", d) for d in names) if m]
    return max(ids, default=-1) + 1


def _run_desc(run):
    return f"{_stem(run.gen or 'gen')}-{run.refine.loss}-kimg{run.kimg:g}"


def _next_run_dir(outdir, desc):
    try:
        os.makedirs(outdir, exist_ok=True)
        run_id = _next_run_id(outdir)
        while True:  # another process may take the same number at the same moment
            path = os.path.join(outdir, f"{run_id:05d}-{desc}")
            try:
                os.makedirs(path)
                return path
            except FileExistsError:
                run_id += 1
    except OSError as err:
        reason = err.strerror or str(err)
        raise RunError(f"--outdir {outdir}: cannot create the run folder there ({reason}); "
                       f"choose a writable folder with --outdir") from None


def _stem(src):
    base = os.path.basename(str(src).split("?")[0].rstrip("/")) or "gen"
    base = re.sub(r"\.(pkl|pickle)$", "", base)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)[:40]


# ---------------------------------------------------------------------------- signals

class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM (Slurm, Kubernetes, `timeout`): finish the step, write a
    snapshot and exit. A second Ctrl-C more than two seconds after the first aborts at once;
    repeats within two seconds are ignored, because torchrun forwards the terminal's Ctrl-C to
    its workers, which then see it twice."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_GRACE_S = 2.0

    def __init__(self, announce=True):
        self.requested = None      # the name of the signal that asked to stop
        self.announce = announce
        self._first = None
        self._previous = {}

    def __call__(self, signum, frame):
        now = time.monotonic()
        if self.requested is not None:
            if signum == signal.SIGINT and now - self._first > self.REPEAT_GRACE_S:
                raise KeyboardInterrupt
            return
        self.requested = signal.Signals(signum).name
        self._first = now
        if self.announce:
            print(f"\n{self.requested} received: finishing this step and writing a snapshot "
                  f"(press Ctrl-C again to abort without one).", file=sys.stderr, flush=True)

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self)
        return self

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


# ---------------------------------------------------------------------------- metrics plan

def resolve_metrics(run, gen_target):
    """The evaluation plan of --metrics (reference, detector, sample count), checked before any
    work starts; None without --metrics."""
    if not run.metrics:
        return None
    from . import pretrained
    ref, ref_entry = run.metrics_ref, None
    if ref == "auto":
        gen_entry = pretrained.entry_for(run.gen) or pretrained.entry_for(gen_target)
        name = gen_entry and pretrained.find_fid_ref(gen_entry["dataset"], gen_entry["resolution"])
        if not name:
            what = (f"data set {gen_entry['dataset']!r} at {gen_entry['resolution']} px" if gen_entry
                    else f"{run.gen} (not a model in the table)")
            raise RunError(f"--metrics-ref auto: the table has no reference statistics for {what}; "
                           f"give --metrics-ref (a statistics .npz with mu/sigma, an image folder "
                           f"or an array)")
        ref = name
    if not os.path.exists(ref):
        ref_entry = pretrained.lookup(ref)
        if ref_entry is not None and ref_entry["role"] != "fid-ref":
            raise RunError(f"--metrics-ref {ref}: that table entry is a {ref_entry['role']}, not "
                           f"reference statistics")
        if ref_entry is None and "://" not in ref:
            raise RunError(f"--metrics-ref: no such file or folder: {ref} (give a statistics .npz, "
                           f"an image folder or array, a URL, or a 'fid-ref' name from "
                           f"pretrained_urls.json)")
    from .metrics import default_detector, default_num
    from .metrics.compute import check_reference
    try:
        check_reference(run.metrics, ref)
    except ValueError as err:
        raise RunError(f"--metrics {','.join(run.metrics)}: {err}; give image files as "
                       f"--metrics-ref") from None
    # The same defaults as gan-refine-metrics for the same reference.
    detector = run.metrics_detector
    if detector == "auto":
        detector = default_detector(ref, ref_entry)
    num = run.metrics_num or default_num(ref, ref_entry)
    plan = dict(metrics=list(run.metrics), ref=ref, detector=detector, num=int(num))
    if run.metrics_seeds:
        from .seeds import parse_seeds
        plan["seeds"] = parse_seeds(run.metrics_seeds)
        plan["num"] = len(plan["seeds"])
    return plan


# ---------------------------------------------------------------------------- launch

def launch(run, state=None, dry_run=False, progress=True, *, generator=None, teacher=None,
           process_group=None):
    """Refine as `run` (a RunConfig) says and write the run folder; returns its path (None
    for a dry run, and on ranks other than 0).

    generator / teacher: in-memory networks (pickle dicts, adapters or modules) to use instead
    of loading run.gen / run.teacher. state: a refine-state dict to continue from.
    process_group: an initialised torch.distributed group to run on; by default the one
    torchrun describes in the environment, else a single process.
    """
    if process_group is not None:
        dist = distributed.from_group(process_group, run.dist_timeout)
        device = run.refine.device
    else:
        try:
            dist, device = distributed.from_env(run.refine.device, run.dist_timeout)
        except (ValueError, distributed.DistributedError) as err:
            raise RunError(err) from None
    console = Console(dist)
    try:
        return _launch(run, dist, device, state, dry_run, progress, generator, teacher, console)
    except distributed.DistributedError as err:
        console.say(f"Error: {err}", console=False)
        raise RunError(err) from None
    except RunError as err:
        console.say(f"Error: {err}", console=False)  # the caller prints it; log.txt keeps it too
        raise
    finally:
        dist.close()


def _launch(run, dist, device, state, dry_run, progress, generator, teacher, console):
    from .adapters import IncompatibleModelsError
    from .adversarial import DataTermError
    from .datasets import DatasetError
    from .fake_augment import AugmentError
    from .refiner import NonFiniteError, NonFiniteWeightsError, Refiner, steps_for_kimg

    if state is not None:
        check_resume_length(state, run.kimg, run.refine.batch)
    if dist.enabled and run.refine.batch % dist.world_size:
        raise RunError(f"--batch {run.refine.batch} is the global batch, split evenly over the "
                       f"{dist.world_size} processes; give a multiple of {dist.world_size}")
    gen_data, gen_target = generator, "<in-memory generator>"
    if generator is None:
        gen_target = _resolve_source(run.gen, "gen")
    teacher_src, teacher_target = run.teacher, "<in-memory teacher>"
    # What the table says of the generator (a dry run then needs no download at all).
    gen_shape = None if generator is not None else _table_shape(run.gen, gen_target)

    def resolve_teacher(src):
        nonlocal gen_data, gen_shape
        from . import pretrained
        # A family or data-set word ('edm', 'digits') means: the table's teacher that fits --gen.
        if not os.path.exists(src) and src.lower() in pretrained.teacher_selectors():
            if gen_shape is None:
                if gen_data is None:
                    gen_data = _load(gen_target, "gen", dist)
                gen_shape = _adapter_shape(_generator_adapter(gen_data, run.gen_key))
            src = _pick_teacher(gen_shape, src.lower())
        return src, _resolve_source(src, "teacher")
    if teacher is None:
        teacher_src, teacher_target = resolve_teacher(teacher_src)
    more = [resolve_teacher(src) for src in run.more_teachers]  # (name, target) of the others
    probs = run.refine.label_probs
    if probs is not None and gen_shape is None and (generator is not None or os.path.isfile(gen_target)):
        if gen_data is None:  # a local file: reading it downloads nothing
            gen_data = _load(gen_target, "gen", dist)
        gen_shape = _adapter_shape(_generator_adapter(gen_data, run.gen_key))
    if probs is not None and gen_shape is not None and len(probs) != gen_shape[2]:
        raise RunError(f"--label-probs has {len(probs)} weights but the generator has "
                       f"{gen_shape[2]} classes")
    steps = steps_for_kimg(run.kimg, run.refine.batch)
    snap_steps = max(1, int(round(run.snap * 1000 / run.refine.batch)))
    evaluation = resolve_metrics(run, gen_target)
    resolved = dict(run.to_dict(), resolved=dict(gen=gen_target, teacher=teacher_target,
                                                 teacher_name=teacher_src, steps=steps,
                                                 more_teachers=[t for _, t in more],
                                                 snap_steps=snap_steps, metrics=evaluation,
                                                 world_size=dist.world_size,
                                                 batch_per_process=run.refine.batch // dist.world_size))
    if dry_run:
        if dist.is_main:
            would = os.path.join(run.outdir, f"{_next_run_id(run.outdir):05d}-{_run_desc(run)}")
            resolved["resolved"]["run_dir"] = would
            print(json.dumps(resolved, indent=2, sort_keys=True))
            print(f"Dry run: would write {would}", file=sys.stderr)
        return None

    if gen_data is None:
        gen_data = _load(gen_target, "gen", dist)
    teacher_data = teacher if teacher is not None else _load(teacher_target, "teacher", dist)
    fake_score = None
    # The first teacher's pickle's augmentation pipe (for --augment), before a mixture hides it.
    augment_pipe = teacher_data.get("augment_pipe") if isinstance(teacher_data, dict) else None
    try:
        if more:  # several teachers: their weighted mixture, and one fake score (the first's copy)
            import copy
            from .adapters import MixtureTeacher, as_teacher
            members = [as_teacher(teacher_data)] + [as_teacher(_load(t, "teacher", dist)) for _, t in more]
            teacher_data = MixtureTeacher(members, run.teacher_weights)
            fake_score = copy.deepcopy(members[0])
        elif run.teacher_weights is not None and len(run.teacher_weights) != 1:
            raise RunError(f"--teacher-weights has {len(run.teacher_weights)} weights for one teacher")
        refiner = Refiner(gen_data, teacher_data, run.refine.replace(device=device),
                          gen_key=run.gen_key, dist=dist, fake_score=fake_score, augment_pipe=augment_pipe,
                          data=run.data if run.refine.data_weight > 0 else None)
    except (IncompatibleModelsError, AugmentError, DataTermError, DatasetError) as err:
        raise RunError(err) from None
    except NonFiniteWeightsError as err:
        source = gen_target if err.what == "generator" else teacher_target
        raise RunError(f"--{'gen' if err.what == 'generator' else 'teacher'} {source}: {err}") from None
    except (TypeError, ValueError) as err:
        raise RunError(err) from None
    probs = run.refine.label_probs
    if probs is not None and len(probs) != refiner.G.c_dim:
        raise RunError(f"--label-probs has {len(probs)} weights but the generator has "
                       f"{refiner.G.c_dim} classes")
    if state is not None:
        try:
            refiner.load_state_dict(state)
        except (ValueError, RuntimeError, KeyError) as err:
            raise RunError(f"--resume: {str(err).splitlines()[0]}") from None

    from . import __version__
    import torch

    def portable(target):  # so --resume works from any working directory
        return target if "://" in target or target.startswith("<") else os.path.abspath(target)
    run_info = dict(gen=portable(gen_target), teacher=portable(teacher_target),
                    gen_name=run.gen, teacher_name=run.teacher, gen_key=run.gen_key,
                    more_teachers=[portable(t) for _, t in more], more_teacher_names=list(run.more_teachers),
                    teacher_weights=run.teacher_weights,
                    kimg=run.kimg, snap=run.snap, grid=run.grid, outdir=os.path.abspath(run.outdir),
                    metrics=run.metrics, metrics_ref=run.metrics_ref, metrics_num=run.metrics_num,
                    metrics_detector=run.metrics_detector, metrics_seeds=run.metrics_seeds,
                    preset=run.preset, world_size=dist.world_size)

    def make_run_dir():
        run_dir = _next_run_dir(run.outdir, _run_desc(run))
        from .snapshot import atomic_write_json
        resolved["resolved"].update(run_dir=run_dir, device=str(refiner.device),
                                    start_step=refiner.cur_step, gan_refine=__version__,
                                    torch=str(torch.__version__))
        try:
            atomic_write_json(os.path.join(run_dir, "refine_options.json"), resolved)
        except OSError as err:
            raise RunError(err) from None
        return run_dir
    def check_space():  # fail now, not at the first snapshot with nothing resumable written
        from .snapshot import check_free_space, clean_stale_temp_files
        if run.resume:  # what a killed run left half-written in the folder it is resumed from
            folder = run.resume if os.path.isdir(run.resume) else os.path.dirname(os.path.abspath(run.resume))
            clean_stale_temp_files(folder)
        try:
            check_free_space(run.outdir, snapshot_bytes(refiner, gen_target))
        except OSError as err:
            raise RunError(err) from None
    dist.on_main(check_space, "checking the free disk space")
    run_dir = dist.on_main(make_run_dir, "creating the run folder")
    console.open(run_dir)
    console.say(f"Refining {run.gen or gen_target} against {teacher_src} on {refiner.device} "
               f"({dist.describe()}); {steps} steps of {run.refine.batch} images; outputs in {run_dir}")
    if run.data and run.refine.data_weight <= 0:
        console.say(f"Note: --data {run.data} is not used at --data-weight 0 (the data-free method); "
                    f"give --data-weight W > 0 to add the real-data term")
    elif refiner.data is not None:
        console.say(f"Real-data term: {len(refiner.data)} images from {run.data}, weight "
                    f"{run.refine.data_weight} (discriminator loss weight {run.refine.data_d_weight})")
    if run.refine.overlap and not refiner.overlap_active:
        console.say(f"Note: --overlap is not used in this run ({refiner.overlap_unused_reason()}); "
                    f"the steps run serially, with the same results")

    writer = RunOutputs(refiner, run_dir, run, run_info, evaluation, dist, console)
    try:
        writer.grid("init")
        writer.evaluate(None)
    except NonFiniteError as err:
        raise RunError(err) from None

    stop = StopRequest(announce=dist.is_main).install()
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, initial=refiner.cur_step, unit="step",
               disable=not (progress and dist.is_main), dynamic_ncols=True, file=sys.stderr)
    t_start = time.time()
    last_snap = None
    stopped = None
    try:
        while refiner.cur_step < steps:
            try:  # a NaN in the step or in the snapshot's samples ends the run the same way
                stats = refiner.step()
                stats["time"] = time.time() - t_start
                writer.log_stats(stats)
                bar.update(1)
                bar.set_postfix({"kimg": f"{stats['kimg']:.4g}", "gap": f"{stats.get('gap/mean', 0):.3g}"},
                                refresh=False)
                stopped = _agree_on_stop(dist, stop, refiner.device)
                done = refiner.cur_step >= steps
                if done or stopped or refiner.cur_step % snap_steps == 0:
                    last_snap = writer.snapshot()
            except NonFiniteError as err:
                bar.close()
                where = f"the last good snapshot is {last_snap}" if last_snap else "no snapshot was written"
                raise RunError(f"{err}; {where}") from None
            if stopped:
                break
    except distributed.DistributedError as err:
        where = f"the last snapshot is {last_snap}" if last_snap else "no snapshot was written"
        raise RunError(f"{err}; {where}") from None
    finally:
        bar.close()
        stop.restore()
        if stopped is None and refiner.cur_step < steps:
            writer.close()  # an error ends the run: keep the events written so far
    writer.before_after()
    writer.close()
    if stopped:
        console.say(f"Stopped by {stopped} after step {refiner.cur_step}: wrote {last_snap}; continue "
                   f"with: {resume_command(run, run_dir)}")
    else:
        console.say(f"Done: {last_snap}")
    writer.summary()
    return run_dir if dist.is_main else None


def check_resume_length(state, kimg, batch):
    """RunError unless `kimg` reaches past what the resumed run has already done."""
    from .refiner import steps_for_kimg
    done, nimg = int(state.get("step", 0)), int(state.get("nimg", 0))
    if steps_for_kimg(kimg, batch) <= done:
        raise RunError(f"--resume: that run already made {done} steps ({nimg / 1000:g} kimg); raise "
                       f"--kimg above {nimg / 1000:g} to continue it")


def resume_command(run, run_dir):
    """The command line that continues this run (it names the networks again: a state file
    is data, and resuming never loads a network named only inside it)."""
    import shlex
    parts = ["gan-refine", "--resume", os.path.join(run_dir, "refine-state.pt")]
    if run.gen:
        parts += ["--gen", run.gen]
    for t in [run.teacher] + list(run.more_teachers):
        if t:
            parts += ["--teacher", t]
    if run.teacher_weights:
        parts += ["--teacher-weights", ",".join(f"{w:g}" for w in run.teacher_weights)]
    return " ".join(shlex.quote(p) for p in parts)


def _agree_on_stop(dist, stop, device):
    """The name of the signal that stops the run, the same on every rank (a signal may reach
    only some of them: another node's Ctrl-C, or SIGTERM to one process)."""
    if not dist.enabled:
        return stop.requested
    import torch
    names = [s.name for s in StopRequest.SIGNALS]
    code = names.index(stop.requested) + 1 if stop.requested else 0
    flag = torch.tensor([code], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op="max", what="checking for a stop request")
    code = int(flag.item())
    return names[code - 1] if code else None
