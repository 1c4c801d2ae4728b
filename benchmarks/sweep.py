"""Screen refinement settings on a digits pair: one run per --set bundle, FID/KID at budgets.

Each run refines the pair's generator with a preset (--preset, `digits` unless given; quality.py
picks `digits-cond` for the conditional pair) plus the given overrides (any
RefineConfig field, `key=value`, several separated by spaces inside one --set), scores G_ema
(and the raw G where --raw) at each budget with the protocol of benchmarks/quality.py (digits
detector, seeds 0..num-1 against the training split), and appends one JSON line per figure to
--log, so a sweep cut short keeps what it measured. At the last budget each line also carries
the rest of quality.py's figures for those images under "figures" (precision and recall in the
detector's features and in pixels, held-out FID, class balance, near-duplicates of training
images), so a screen sees the issue's failure checks too.

    python benchmarks/sweep.py --pair uncond --steps 250,500 --seed 0 \
        --set "fake_updates=2" --set "lr_fake=2e-3" --log docs/quality/sweep.jsonl
"""

import argparse
import copy
import json
import os
import pickle
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gan_refine  # noqa: E402
from gan_refine.config import PRESETS  # noqa: E402
from gan_refine.metrics.detectors import get_detector  # noqa: E402
from gan_refine.refiner import Refiner  # noqa: E402
from gan_refine.snapshot import append_jsonl, atomic_write_bytes  # noqa: E402
from gan_refine.zoo.digits_data import load_digits_split  # noqa: E402
from quality import PAIRS, _evaluator, cpu_model, features, fid_kid, generator_features, parse_set  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", default="uncond", choices=sorted(PAIRS))
    ap.add_argument("--steps", default="250,500", help="generator steps at which to score")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--preset", default="digits", choices=sorted(PRESETS),
                    help="the method settings each run starts from (default digits, for both pairs)")
    ap.add_argument("--set", action="append", default=[], help="overrides of one run ('' = the preset)")
    ap.add_argument("--raw", action="store_true", help="also score the raw generator (not its EMA)")
    ap.add_argument("--emas", default="", help="extra EMA ramp-ups to keep alongside the run's own "
                                               "(e.g. 0.1,0.2,0.4), each scored at every budget")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--teachers", default=None,
                    help="comma-separated teachers (names or pickle paths) whose weighted mixture is "
                         "the target, instead of the pair's teacher")
    ap.add_argument("--weights", default=None, help="mixture weights for --teachers (default: equal)")
    ap.add_argument("--data", choices=["none", "train"], default="none",
                    help="real images for the data term (--set data_weight=W): the digits training "
                         "split; the held-out split is never used")
    ap.add_argument("--save", default=None,
                    help="folder for the refined G_ema of each run at the last budget, pickled as a "
                         "plain module (for scoring it later with other figures)")
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.steps.split(",")]
    cpu = cpu_model()
    detector = get_detector("digits", device="cpu")
    x_train, y_train, _, _ = load_digits_split(16)
    ref_feat = features(detector, x_train)
    gen_name, teacher_name = PAIRS[args.pair]
    gen_data = gan_refine.load_network_pkl(gen_name)
    teacher_data = gan_refine.load_network_pkl(teacher_name)
    for run, text in enumerate(args.set or [""]):
        opts = dict(PRESETS[args.preset]["method"], **parse_set(text))
        data = None if args.data == "none" else (torch.as_tensor(x_train), torch.as_tensor(y_train))
        teacher, fake = teacher_data, None
        if args.teachers:
            from gan_refine.adapters import MixtureTeacher, as_teacher
            members = [as_teacher(gan_refine.load_network_pkl(t)) for t in args.teachers.split(",")]
            weights = [float(w) for w in args.weights.split(",")] if args.weights else None
            teacher, fake = MixtureTeacher(members, weights), copy.deepcopy(members[0])
        r = Refiner(gen_data, teacher, device="cpu", seed=args.seed, data=data, fake_score=fake, **opts)
        done, t_refine = 0, 0.0
        emas = {f"ema{ru:g}": copy.deepcopy(r.G_ema) for ru in
                [float(v) for v in args.emas.split(",") if v]}

        def update_emas():
            for name, ema in emas.items():  # the Refiner's own rule, at another ramp-up
                r.update_ema(ema, float(name[3:]))

        for b in budgets:
            t = time.time()
            for _ in range(b - done):
                r.step()
                update_emas()
            t_refine += time.time() - t
            done = b
            for which in ("ema",) + (("raw",) if args.raw else ()) + tuple(emas):
                G = emas[which].module if which in emas else r.refined_generator(ema=(which == "ema"))
                fid, kid = fid_kid(generator_features(detector, G, args.num), ref_feat)
                line = dict(pair=args.pair, preset=args.preset, set=text, data=args.data, teachers=args.teachers,
                            weights=args.weights, seed=args.seed, step=b, which=which, fid=fid, kid=kid,
                            refine_seconds=round(t_refine, 1), threads=args.threads, cpu=cpu, date=time.strftime("%Y-%m-%d"))
                if b == budgets[-1]:
                    line["figures"] = _evaluator("cpu", args.num).of_generator(G)
                    if args.save and which == "ema":
                        name = f"{args.pair}-{args.preset}-s{args.seed}-run{run}.pkl"
                        atomic_write_bytes(os.path.join(args.save, name),
                                           pickle.dumps(dict(G_ema=G, set=text, seed=args.seed)))
                print(json.dumps(line), flush=True)
                append_jsonl(args.log, line)


if __name__ == "__main__":
    main()
