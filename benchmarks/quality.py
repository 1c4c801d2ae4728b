"""Does refinement make the digits GANs better? Before, after and the teacher, on every figure.

For each digits pair (unconditional, conditional) it reports, against the training images:
  (a) the starting generator (G_ema of the shipped pickle),
  (b) the refined generator after each budget, mean and spread over --seeds refinement seeds,
  (c) the teacher's own multi-step sampler (EDM Heun, 18 steps = 35 evaluations),
  (d) the held-out test images (the floor: real images the models never saw),
plus one optional ablation (--ablation). FID/KID at every budget; at the last budget the full
figure set of benchmarks/digits_eval.py (precision and recall in the digits detector's features
and in raw pixels, FID against the held-out split, class balance, near-duplicates). Writes
<out>.json and <out>.md; --log keeps every figure as it is measured.

The method settings are the pair's preset (gan_refine.config.PRESETS: `digits` for the
unconditional pair, `digits-cond` for the conditional one, or --preset) unless flags or --set
change them, so the presets and this benchmark cannot drift apart.

    python benchmarks/quality.py                 # the table of docs/benchmarks.md (about 1.5 hours on 2 cores)
    python benchmarks/quality.py --quick         # a smaller version: a few minutes
    python benchmarks/quality.py --data train    # with the real-data term on the training split

Runs go to --jobs worker processes (default: one per CPU core, one thread each).
"""

import argparse
import ast
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gan_refine  # noqa: E402
from gan_refine.config import PRESETS  # noqa: E402
from gan_refine.metrics.compute import GeneratorSource, compute_feature_stats, quantize  # noqa: E402
from gan_refine.metrics.stats import frechet_distance, kernel_inception_distance  # noqa: E402
from gan_refine.snapshot import append_jsonl, atomic_write_text  # noqa: E402

PAIRS = {"uncond": ("digits", "digits-edm"), "cond": ("digits-cond", "digits-edm-cond")}
ABLATIONS = {
    "none": None,
    "fake-updates": ("fake-score updates per generator update = 5", dict(fake_updates=5)),
    "sid": ("SiD loss (alpha 1.2)", dict(loss="sid")),
    "no-warmup": ("no fake-score warm-up", dict(fake_warmup=0)),
    "single-forward": ("update order single-forward (one generator forward per step; one noise draw, "
                       "which that order needs)",
                       dict(update_order="single-forward", noise_draws=1)),
    "teacher-train": ("teacher and fake score in train mode (shared dropout)", dict(teacher_mode="train")),
    "no-dmd": ("without DMD normalisation", dict(normalize="none")),
    "no-augment": ("without fake-score augmentation", dict(augment=0.0)),
}
SUMMARY_KEYS = ("fid", "kid", "fid_test", "precision", "recall", "pixel_fid", "pixel_precision",
                "pixel_recall", "class_tv", "dup_rate", "copying_ct", "label_accuracy")


# ---------------------------------------------------------------------------- shared helpers
# (benchmarks/sweep.py imports these)

def features(detector, images, batch=500):
    # The detector moves its input to its own device.
    return torch.cat([detector(quantize(images[i:i + batch])).double().cpu()
                      for i in range(0, len(images), batch)]).numpy()


def generator_features(detector, G, num, seed=0):
    """Features of G's images at seeds seed..seed+num-1: the protocol of `gan-refine --metrics`
    and `gan-refine-metrics` (numpy latents per seed, uint8 quantisation), so figures agree."""
    src = GeneratorSource(G, num=num, seed=seed)
    return compute_feature_stats(src, detector, batch_size=250, capture_all=True).get_all()


def fid_kid(feat, ref_feat):
    mu1, s1 = feat.mean(0), np.cov(feat, rowvar=False)
    mu2, s2 = ref_feat.mean(0), np.cov(ref_feat, rowvar=False)
    fid = float(frechet_distance(mu1, s1, mu2, s2))
    kid, _ = kernel_inception_distance(feat, ref_feat, num_subsets=50, max_subset_size=500, seed=0)
    return fid, kid


def teacher_samples(teacher_data, n, device, seed=0, steps=18):
    """n teacher images (EDM Heun, `steps` steps) from torch seed `seed`, and their class indices."""
    from gan_refine.zoo.edm_sampler import heun_sample
    net = teacher_data["ema"].to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, net.img_channels, net.img_resolution, net.img_resolution, generator=gen)
    labels = None
    if net.label_dim:
        labels = torch.randint(net.label_dim, (n,), generator=gen)
    out = []
    for i in range(0, n, 500):
        lab = None if labels is None else torch.eye(net.label_dim)[labels[i:i + 500]].to(device)
        out.append(heun_sample(net, latents[i:i + 500].to(device), lab, num_steps=steps).float().cpu())
    return torch.cat(out).clamp(-1, 1), labels


def summarize(values):
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def parse_set(text):
    """'a=1 b=x' -> {'a': 1, 'b': 'x'} (values as Python literals where they parse)."""
    out = {}
    for item in (text or "").split():
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


# ---------------------------------------------------------------------------- jobs

_EVAL = {}


def _evaluator(device, num):
    from digits_eval import DigitsEvaluator
    key = (str(device), num)
    if key not in _EVAL:
        _EVAL[key] = DigitsEvaluator(device=device, num=num)
    return _EVAL[key]


def cpu_model():
    """The CPU's model name and the vector extension torch's kernels use (e.g. "Intel(R) Xeon(R)
    Processor, AVX512"): runs on two CPU models do not repeat each other bit for bit, so every
    recorded figure names it."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return f"{name}, {capability}" if capability else name


def _init_worker(threads):
    torch.set_num_threads(threads)


def run_job(job):
    """One unit of work in a worker process: a reference figure set or one refinement curve."""
    ev = _evaluator(job["device"], job["num"])
    t0 = time.time()
    if job["kind"] == "floor":
        return dict(job, figures=ev.of_real("test"), seconds=time.time() - t0)
    gen_name, teacher_name = PAIRS[job["pair"]]
    if job["kind"] == "start":
        from gan_refine.adapters import as_generator
        G = as_generator(gan_refine.load_network_pkl(gen_name)).module
        images, labels = ev.generator_images(G, job["num"], seed=job["image_set"] * job["num"])
        return dict(job, figures=ev.figures(images, labels), seconds=time.time() - t0)
    if job["kind"] == "teacher":
        images, labels = teacher_samples(gan_refine.load_network_pkl(teacher_name), job["num"], job["device"],
                                         seed=job["image_set"])
        return dict(job, figures=ev.figures(quantize(images), labels), seconds=time.time() - t0, nfe=35)
    # A refinement curve.
    from gan_refine.refiner import Refiner
    data = None
    if job["data"] == "train":
        from gan_refine.zoo.digits_data import load_digits_split
        x_train, y_train, _, _ = load_digits_split(16)   # the training split only, never the held-out one
        data = (x_train, y_train)
    r = Refiner(gan_refine.load_network_pkl(gen_name), gan_refine.load_network_pkl(teacher_name),
                device=job["device"], seed=job["seed"], data=data, **job["method"])
    curve, done, refine_seconds = {}, 0, 0.0
    for b in job["budgets"]:
        t = time.time()
        r.run(steps=b - done)
        refine_seconds += time.time() - t
        done = b
        G = r.refined_generator()
        if b == job["budgets"][-1]:
            curve[str(b)] = ev.of_generator(G)
        else:
            curve[str(b)] = dict(zip(("fid", "kid"), ev.fid_kid(ev.generator_images(G)[0])))
        if job.get("log"):
            append_jsonl(job["log"], dict(pair=job["pair"], label=job["label"], seed=job["seed"], step=b,
                                          **curve[str(b)]))
    return dict(job, curve=curve, seconds=refine_seconds)


# ---------------------------------------------------------------------------- report

def _agg(figure_sets):
    """[{key: value}] -> {key: summary} over the keys every set has."""
    keys = [k for k in SUMMARY_KEYS if all(k in f for f in figure_sets)]
    return {k: summarize([f[k] for f in figure_sets]) for k in keys}


def _fmt(s, digits=3):
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if len(s["values"]) > 1 else f"{s['mean']:.{digits}f}"


def markdown(results, meta):
    lines = [f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['date']}; {meta['num']} generated "
             f"images per figure vs {meta['num_ref']} training images; refinement settings {meta['method']}; "
             f"{meta['seeds']} refinement seed(s) from {meta.get('first_seed', 0)} (mean ± std); data term: "
             f"{meta['data']}.", "",
             f"Command: `{meta['command']}`", ""]
    floor = results["floor"]
    lines += [f"Floor (the {meta['num_test']} held-out images vs the training images): FID {floor['fid']:.3f}, "
              f"precision {floor['precision']:.3f}, recall {floor['recall']:.3f}; pixels: FID "
              f"{floor['pixel_fid']:.3f}, precision {floor['pixel_precision']:.3f}, recall "
              f"{floor['pixel_recall']:.3f}; class TV {floor['class_tv']:.3f}; near-duplicate rate "
              f"{floor['dup_rate']:.3f} and data-copying C_T {floor['copying_ct']:.2f} (both by construction)", ""]
    for kind in ("uncond", "cond"):
        r = results.get(kind)
        if r is None:
            continue
        start, teacher = r["start"], r["teacher_heun18"]
        lines += [f"### {kind}: {r['generator']} refined against {r['teacher']}", "",
                  "Digits-FID by generator step (image set 0):", "",
                  "| model | " + " | ".join(str(b) for b in meta["budgets"]) + " |",
                  "|---|" + "---|" * len(meta["budgets"])]
        lines.append(f"| starting generator | {start['fid']['values'][0]:.3f} (all steps) |" +
                     " |" * (len(meta["budgets"]) - 1))
        for label, curve in r["curves"].items():
            lines.append(f"| {label} | " + " | ".join(_fmt(curve[str(b)]["fid"]) for b in meta["budgets"]) + " |")
        lines.append(f"| teacher, Heun 18 steps (35 NFE) | {teacher['fid']['values'][0]:.3f} |" +
                     " |" * (len(meta["budgets"]) - 1))
        last = str(meta["budgets"][-1])
        cols = [k for k in SUMMARY_KEYS if k in start]
        lines += ["", f"All figures at {last} steps (start and teacher: mean ± std over {meta['eval_seeds']} "
                      f"image sets):", "",
                  "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols),
                  "| starting generator | " + " | ".join(_fmt(start[k]) for k in cols) + " |"]
        for label, curve in r["curves"].items():
            lines.append(f"| {label} | " + " | ".join(_fmt(curve[last][k]) if k in curve[last] else "-"
                                                     for k in cols) + " |")
        lines.append("| teacher, Heun 18 | " + " | ".join(_fmt(teacher[k]) for k in cols) + " |")
        main = r["curves"].get("refined")
        if main is not None:
            gap = start["fid"]["values"][0] - teacher["fid"]["values"][0]
            closed = (start["fid"]["values"][0] - main[last]["fid"]["mean"]) / gap
            gap_m = start["fid"]["mean"] - teacher["fid"]["mean"]
            closed_m = (start["fid"]["mean"] - main[last]["fid"]["mean"]) / gap_m
            lines += ["", f"Share of the start-to-teacher FID gap closed at {last} steps: **{closed:.0%}** "
                          f"(against the references' means over image sets: {closed_m:.0%}); refinement "
                          f"wall time per seed {r['seconds']['refined']['mean']:.0f} s."]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="uncond,cond")
    ap.add_argument("--budgets", default="250,500,1000,1500", help="generator steps at which to evaluate")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--num", type=int, default=2000, help="generated images per evaluation")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--lr-gen", type=float, default=None)
    ap.add_argument("--lr-fake", type=float, default=None)
    ap.add_argument("--fake-warmup", type=int, default=None)
    ap.add_argument("--p-mean", type=float, default=None, help="log-normal noise-level law: mean of ln(sigma)")
    ap.add_argument("--teacher-mode", choices=["eval", "train"], default=None)
    ap.add_argument("--update-order", choices=["official", "single-forward"], default=None)
    ap.add_argument("--set", default="", help="further method settings, 'key=value key=value' (RefineConfig fields)")
    ap.add_argument("--preset", default="auto", choices=["auto"] + sorted(PRESETS),
                    help="settings bundle to start from ('auto': digits, and digits-cond for the cond pair)")
    ap.add_argument("--first-seed", type=int, default=0, help="refinement seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--plain", action="store_true",
                    help="start from Diff-Instruct's plain IKL settings of the earlier quality runs "
                         "(no DMD normalisation, no augmentation) instead of the digits preset")
    ap.add_argument("--data", choices=["none", "train"], default="none",
                    help="'train': add the real-data term on the digits training split (never the held-out one)")
    ap.add_argument("--ablation", choices=sorted(ABLATIONS), default="none")
    ap.add_argument("--ablation-pairs", default="uncond", help="pairs the ablation runs on")
    ap.add_argument("--ablation-seeds", type=int, default=2)
    ap.add_argument("--eval-seeds", type=int, default=3,
                    help="image sets the starting generator and the teacher are scored on (their spread)")
    ap.add_argument("--references-only", action="store_true",
                    help="only the starting generator, the teacher and the floor: no refinement")
    ap.add_argument("--ablation-only", action="store_true", help="skip the main refinement curves")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU cores, 1 on CUDA)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--log", default=None, help="append every figure as a JSON line here as it is measured")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny budgets, 1 seed, 300 images: a smoke run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.budgets, args.seeds, args.num, args.eval_seeds = "3,6", 1, 300, 1
        args.ablation_seeds = 1
    budgets = [int(b) for b in args.budgets.split(",")]
    def settings(pair):
        name = args.preset if args.preset != "auto" else ("digits-cond" if pair == "cond" else "digits")
        method = dict(PRESETS[name]["method"])
        if args.plain:
            method.update(normalize="none", augment=0.0, loss="ikl")
        for flag, key in (("batch", "batch"), ("lr_gen", "lr_gen"), ("lr_fake", "lr_fake"),
                          ("fake_warmup", "fake_warmup"), ("p_mean", "P_mean"), ("teacher_mode", "teacher_mode"),
                          ("update_order", "update_order")):
            if getattr(args, flag) is not None:
                method[key] = getattr(args, flag)
        method.update(parse_set(args.set))
        if args.data == "train" and not method.get("data_weight"):
            method["data_weight"] = 3e-3
        if args.quick:
            method["fake_warmup"] = min(method.get("fake_warmup", 0), 5)
        return method
    pairs = args.pairs.split(",")
    methods = {kind: settings(kind) for kind in pairs}
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    jobs_n = args.jobs or (1 if device.startswith("cuda") else max(1, os.cpu_count() or 1))
    t_all = time.time()

    jobs = [dict(kind="floor", pair=None)]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for kind in pairs:
        method = methods[kind]
        for k in range(args.eval_seeds):
            jobs += [dict(kind="teacher", pair=kind, image_set=k), dict(kind="start", pair=kind, image_set=k)]
        if args.references_only:
            continue
        if not args.ablation_only:
            jobs += [dict(kind="refine", pair=kind, label="refined", seed=s, method=method) for s in seeds]
        ab = ABLATIONS[args.ablation]
        if ab is not None and kind in args.ablation_pairs.split(","):
            jobs += [dict(kind="refine", pair=kind, label=ab[0], seed=s, method=dict(method, **ab[1]))
                     for s in range(args.ablation_seeds)]
    # The long jobs first, so the workers finish together.
    jobs.sort(key=lambda j: j["kind"] != "refine")
    for j in jobs:
        j.update(device=device, num=args.num, budgets=budgets, data=args.data, log=args.log)

    def say(msg):
        line = f"{time.time() - t_all:7.1f}s {msg}"
        print(line, flush=True)
        if args.log:
            append_jsonl(args.log, {"message": line})

    say(f"{len(jobs)} jobs on {jobs_n} worker(s); settings {methods}")
    done = []
    if jobs_n == 1:
        _init_worker(args.threads)
        it = map(run_job, jobs)
    else:
        pool = mp.get_context("spawn").Pool(jobs_n, initializer=_init_worker, initargs=(args.threads,))
        it = pool.imap_unordered(run_job, jobs)
    for res in it:
        done.append(res)
        if res["kind"] == "refine":
            last = res["curve"][str(budgets[-1])]
            say(f"[{res['pair']}] {res['label']} seed {res['seed']}: FID " +
                ", ".join(f"{b}: {res['curve'][str(b)]['fid']:.3f}" for b in budgets) +
                f"; precision {last['precision']:.3f}, recall {last['recall']:.3f} ({res['seconds']:.0f} s)")
        else:
            say(f"[{res['pair'] or 'floor'}] {res['kind']} {res.get('image_set', '')}: FID {res['figures']['fid']:.3f}")
    if jobs_n > 1:
        pool.close()
        pool.join()

    results = {"floor": next(r["figures"] for r in done if r["kind"] == "floor")}
    for kind in pairs:
        mine = [r for r in done if r["pair"] == kind]
        by_set = lambda what: [r["figures"] for r in sorted((r for r in mine if r["kind"] == what),  # noqa: E731
                                                            key=lambda r: r["image_set"])]
        entry = {"generator": PAIRS[kind][0], "teacher": PAIRS[kind][1],
                 "start": _agg(by_set("start")), "teacher_heun18": _agg(by_set("teacher")),
                 "curves": {}, "seconds": {}}
        for label in dict.fromkeys(r["label"] for r in mine if r["kind"] == "refine"):
            runs = sorted((r for r in mine if r["kind"] == "refine" and r["label"] == label), key=lambda r: r["seed"])
            entry["curves"][label] = {str(b): _agg([r["curve"][str(b)] for r in runs]) for b in budgets}
            entry["seconds"][label] = summarize([r["seconds"] for r in runs])
        results[kind] = entry
    from gan_refine.zoo.digits_data import load_digits_split
    x_train, _, x_test, _ = load_digits_split(16)
    machine = (torch.cuda.get_device_name(0) if device.startswith("cuda")
               else f"{cpu_model()} CPU, {jobs_n} worker(s) x {args.threads} thread(s)")
    meta = {"machine": machine, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "num": args.num,
            "num_ref": len(x_train), "num_test": len(x_test), "method": methods, "budgets": budgets,
            "seeds": args.seeds, "first_seed": args.first_seed, "eval_seeds": args.eval_seeds, "data": args.data,
            "command": " ".join(["python", "benchmarks/quality.py"] + sys.argv[1:]),
            "total_seconds": time.time() - t_all}
    md = markdown(results, meta)
    print(md)
    if args.out:  # atomic: an interrupted write never leaves half a report over an earlier one
        atomic_write_text(args.out + ".json", json.dumps({"meta": meta, "results": results}, indent=1))
        atomic_write_text(args.out + ".md", md + "\n")


if __name__ == "__main__":
    main()
