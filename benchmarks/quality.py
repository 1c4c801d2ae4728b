"""Does refinement make the digits GANs better? Digits-FID/KID before, after, vs the teacher.

For each digits pair (unconditional, conditional) it reports, against the training images:
  (a) the starting generator (G_ema of the shipped pickle),
  (b) the refined generator after each budget, mean and spread over --seeds refinement seeds,
  (c) the teacher's own multi-step sampler (EDM Heun, 18 steps = 35 evaluations),
  (d) the held-out test images (the floor: real images the models never saw),
plus one ablation (--ablation: no fake-score warm-up, 5 fake-score updates per generator
update, SiD instead of IKL, teacher in train mode, or the single-forward update order), with wall times and the machine. Writes
<out>.json and <out>.md. FIDs follow the `gan-refine --metrics` protocol (seeds 0..num-1).

    python benchmarks/quality.py [--quick] [--out docs/quality/run]

On a 2-core CPU, run the pairs and the ablation as separate processes with --threads 1
(--pairs uncond / --pairs cond / --ablation-only): docs/benchmarks.md has the commands.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gan_refine  # noqa: E402
from gan_refine.adapters import as_generator  # noqa: E402
from gan_refine.metrics.detectors import get_detector  # noqa: E402
from gan_refine.metrics.stats import frechet_distance, kernel_inception_distance  # noqa: E402
from gan_refine.metrics.compute import GeneratorSource, compute_feature_stats, quantize  # noqa: E402
from gan_refine.refiner import Refiner  # noqa: E402
from gan_refine.zoo.digits_data import load_digits_split  # noqa: E402

PAIRS = {"uncond": ("digits", "digits-edm"), "cond": ("digits-cond", "digits-edm-cond")}


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
    from gan_refine.zoo.edm_sampler import heun_sample
    net = teacher_data["ema"].to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, net.img_channels, net.img_resolution, net.img_resolution, generator=gen)
    labels = None
    if net.label_dim:
        labels = torch.eye(net.label_dim)[torch.randint(net.label_dim, (n,), generator=gen)]
    out = []
    for i in range(0, n, 500):
        lab = None if labels is None else labels[i:i + 500].to(device)
        out.append(heun_sample(net, latents[i:i + 500].to(device), lab, num_steps=steps).float().cpu())
    return torch.cat(out).clamp(-1, 1)


def summarize_pairs(figs):
    """[(fid, kid), ...] over image sets -> {'fid': summary, 'kid': summary}."""
    return {"fid": summarize([f for f, _ in figs]), "kid": summarize([k for _, k in figs])}


def summarize(values):
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def run_pair(kind, args, detector, ref_feat, device, log):
    gen_name, teacher_name = PAIRS[kind]
    gen_data = gan_refine.load_network_pkl(gen_name)
    teacher_data = gan_refine.load_network_pkl(teacher_name)
    res = {"generator": gen_name, "teacher": teacher_name}

    # Image set k uses generator seeds k*num .. (k+1)*num - 1 (set 0 is the one every refined
    # generator is scored on) and teacher latents from torch seed k.
    start = as_generator(gen_data).to(device)   # the pickle's G_ema, as the refiner starts from it
    figs = [fid_kid(generator_features(detector, start, args.num, seed=k * args.num), ref_feat)
            for k in range(args.eval_seeds)]
    res["start"] = dict(fid=figs[0][0], kid=figs[0][1], image_sets=summarize_pairs(figs))
    log(f"[{kind}] start: FID {res['start']['fid']:.3f} (image sets: {[round(f, 3) for f, _ in figs]})")

    figs, secs = [], []
    for k in range(args.eval_seeds):
        t0 = time.time()
        figs.append(fid_kid(features(detector, teacher_samples(teacher_data, args.num, device, seed=k)), ref_feat))
        secs.append(time.time() - t0)
    res["teacher_heun18"] = dict(fid=figs[0][0], kid=figs[0][1], image_sets=summarize_pairs(figs),
                                 seconds=secs[0], nfe=35)
    log(f"[{kind}] teacher Heun-18: FID {res['teacher_heun18']['fid']:.3f} (image sets: {[round(f, 3) for f, _ in figs]})")
    if args.references_only:
        return res

    def refine_curve(label, **overrides):
        curve = {b: {"fid": [], "kid": []} for b in args.budgets}
        secs = []
        for seed in range(args.seeds):
            opts = dict(args.method, **overrides)
            r = Refiner(gen_data, teacher_data, device=device, seed=seed, **opts)
            t = time.time()
            done = 0
            for b in args.budgets:
                r.run(steps=b - done)
                done = b
                t_eval = time.time()
                fid, kid = fid_kid(generator_features(detector, r.refined_generator(), args.num), ref_feat)
                t -= time.time() - t_eval   # wall time counts refinement only
                curve[b]["fid"].append(fid)
                curve[b]["kid"].append(kid)
                log(f"[{kind}] {label} seed {seed} step {b}: FID {fid:.3f}")
            secs.append(time.time() - t)
        return {str(b): {"fid": summarize(v["fid"]), "kid": summarize(v["kid"])} for b, v in curve.items()}, secs

    if not args.ablation_only:
        res["refined"], secs = refine_curve("ikl")
        res["refine_seconds_per_seed"] = summarize(secs)
    res["_refine_curve"] = refine_curve
    return res


def run_ablation(kind, res, args):
    refine_curve = res.pop("_refine_curve")
    if kind in args.ablation_pairs.split(","):
        seeds, args.seeds = args.seeds, args.ablation_seeds
        if args.ablation == "fake-updates":
            res["ablation"] = {"name": "fake-score updates per generator update = 5",
                               "curve": refine_curve("fake5", fake_updates=5)[0]}
        elif args.ablation == "sid":
            res["ablation"] = {"name": "SiD loss (alpha 1.2)", "curve": refine_curve("sid", loss="sid")[0]}
        elif args.ablation == "no-warmup":
            res["ablation"] = {"name": "no fake-score warm-up", "curve": refine_curve("no-warmup", fake_warmup=0)[0]}
        elif args.ablation == "single-forward":
            curve, secs = refine_curve("single-forward", update_order="single-forward")
            res["ablation"] = {"name": "update order single-forward (one generator forward per step)",
                               "curve": curve, "seconds_per_seed": summarize(secs)}
        elif args.ablation == "teacher-train":
            res["ablation"] = {"name": "teacher and fake score in train mode (shared dropout)",
                               "curve": refine_curve("train-mode", teacher_mode="train")[0]}
        args.seeds = seeds
    return res


def _sets(entry):
    """' (image sets: mean ± std, n)' when the figure was measured on several image sets."""
    sets = entry.get("image_sets")
    if not sets or len(sets["fid"]["values"]) < 2:
        return ""
    f = sets["fid"]
    return f" (image sets: {f['mean']:.3f} ± {f['std']:.3f}, n={len(f['values'])})"


def markdown(results, meta):
    lines = [f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['date']}; "
             f"{meta['num']} generated images vs {meta['num_ref']} training images, digits detector "
             f"({meta['feature_dim']}-d features); refinement settings {meta['method']}, "
             f"{meta['seeds']} seeds (mean ± std).", "", f"Command: `{meta['command']}`", "",
             f"Floor (held-out test vs train, {meta['num_test']} images): FID {results['floor']['fid']:.3f}, "
             f"KID {results['floor']['kid']:.5f}", ""]
    for kind in ("uncond", "cond"):
        r = results.get(kind)
        if r is None:
            continue
        lines += [f"### {kind}: {r['generator']} refined against {r['teacher']}", "",
                  "| model | steps | FID | KID |", "|---|---|---|---|",
                  f"| starting generator | 0 | {r['start']['fid']:.3f}{_sets(r['start'])} | {r['start']['kid']:.5f} |"]
        for b, v in r.get("refined", {}).items():
            lines.append(f"| refined (IKL) | {b} | {v['fid']['mean']:.3f} ± {v['fid']['std']:.3f} | "
                         f"{v['kid']['mean']:.5f} ± {v['kid']['std']:.5f} |")
        if "ablation" in r:
            for b, v in r["ablation"]["curve"].items():
                lines.append(f"| {r['ablation']['name']} | {b} | {v['fid']['mean']:.3f} ± {v['fid']['std']:.3f} | "
                             f"{v['kid']['mean']:.5f} ± {v['kid']['std']:.5f} |")
        t = r["teacher_heun18"]
        lines.append(f"| teacher, EDM Heun 18 steps (35 NFE) | - | {t['fid']:.3f}{_sets(t)} | {t['kid']:.5f} |")
        if "refined" in r:
            last = r["refined"][str(max(int(b) for b in r["refined"]))]["fid"]["mean"]
            gap = r["start"]["fid"] - t["fid"]
            closed = (r["start"]["fid"] - last) / gap if gap > 0 else float("nan")
            lines += ["", f"Share of the start-to-teacher FID gap closed at the largest budget: {closed:.0%} "
                          f"(refinement wall time per seed: {r['refine_seconds_per_seed']['mean']:.0f} s)"]
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="uncond,cond")
    ap.add_argument("--budgets", default="250,500,1000,1500", help="generator steps at which to evaluate")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--num", type=int, default=2000, help="generated images per evaluation")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr-gen", type=float, default=2e-3)
    ap.add_argument("--lr-fake", type=float, default=1e-3)
    ap.add_argument("--fake-warmup", type=int, default=300)
    ap.add_argument("--p-mean", type=float, default=0.0, help="log-normal noise-level law: mean of ln(sigma)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--teacher-mode", choices=["eval", "train"], default="eval")
    ap.add_argument("--update-order", choices=["official", "single-forward"], default="official",
                    help="update order of the main curves (the single-forward ablation compares the other)")
    ap.add_argument("--ablation", choices=["none", "fake-updates", "sid", "teacher-train", "no-warmup",
                                           "single-forward"],
                    default="no-warmup")
    ap.add_argument("--ablation-pairs", default="uncond", help="pairs the ablation runs on")
    ap.add_argument("--ablation-seeds", type=int, default=2)
    ap.add_argument("--eval-seeds", type=int, default=3,
                    help="image sets the starting generator and the teacher are scored on (spread of the references)")
    ap.add_argument("--references-only", action="store_true",
                    help="only the starting generator, the teacher and the floor: no refinement")
    ap.add_argument("--ablation-only", action="store_true",
                    help="skip the main refinement curves (run the ablation in a process of its own)")
    ap.add_argument("--log", default=None, help="append every figure as a JSON line here as it is measured")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny budgets, 1 seed: a smoke run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.budgets, args.seeds, args.num, args.ablation = "3,6", 1, 300, "none"
        args.fake_warmup = min(args.fake_warmup, 5)
    args.budgets = [int(b) for b in args.budgets.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    args.method = dict(batch=args.batch, lr_gen=args.lr_gen, lr_fake=args.lr_fake,
                       fake_warmup=args.fake_warmup, P_mean=args.p_mean, teacher_mode=args.teacher_mode,
                       update_order=args.update_order)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    t_all = time.time()

    def log(msg):
        line = f"{time.time() - t_all:7.1f}s {msg}"
        print(line, flush=True)
        if args.log:  # partial results survive a run that is cut short
            with open(args.log, "a") as f:
                f.write(line + "\n")

    detector = get_detector("digits", device=device)
    x_train, _, x_test, _ = load_digits_split(16)
    ref_feat = features(detector, x_train)
    floor = fid_kid(features(detector, x_test), ref_feat)
    results = {"floor": {"fid": floor[0], "kid": floor[1]}}
    log(f"floor: FID {floor[0]:.3f}")
    for kind in args.pairs.split(","):
        results[kind] = run_pair(kind, args, detector, ref_feat, device, log)
    for kind in args.pairs.split(","):
        if not args.references_only:
            run_ablation(kind, results[kind], args)
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    meta = {"machine": machine, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "num": args.num, "num_ref": len(x_train), "num_test": len(x_test), "method": args.method,
            "seeds": args.ablation_seeds if args.ablation_only else args.seeds, "feature_dim": int(ref_feat.shape[1]), "command": " ".join(sys.argv),
            "total_seconds": time.time() - t_all}
    md = markdown(results, meta)
    print(md)
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
