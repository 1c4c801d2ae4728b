"""End-to-end self-check that needs no download: `python -m gan_refine.selfcheck [--outdir runs]`.

Builds a small StyleGAN2-layout generator pickle and a matching EDM-layout teacher pickle with
our own networks (random weights: this checks the plumbing, not image quality), loads them
through the public API, prints their summaries, runs a short refinement through the real
`gan-refine` command, reloads the exported pickle and reports how much the generator changed.
"""

import argparse
import json
import os
import sys
import time

import torch

import gan_refine
from gan_refine import compat


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m gan_refine.selfcheck", description=__doc__.splitlines()[0])
    ap.add_argument("--outdir", default="runs", help="where the fixture pickles and the run folder go")
    ap.add_argument("--kimg", type=float, default=0.064, help="length of the short refinement")
    args = ap.parse_args(argv)

    from gan_refine import nets, pickles
    from gan_refine.adapters import as_generator, as_teacher, check_compatible
    from torch_utils import custom_ops

    t0 = time.time()
    work = os.path.join(args.outdir, "selfcheck")
    os.makedirs(work, exist_ok=True)
    gen_pkl = os.path.join(work, "fixture-stylegan2-16px.pkl")
    teacher_pkl = os.path.join(work, "fixture-edm-16px.pkl")
    pickles.save_network_pkl(nets.stylegan2_pkl_dict(res=16, c_dim=0, channels=3, seed=0), gen_pkl)
    pickles.save_network_pkl(nets.edm_pkl_dict(kind="EDMPrecond", res=16, channels=3, label_dim=0, seed=1),
                             teacher_pkl)
    print(f"dnnlib from: {compat.provider('dnnlib')}, torch_utils from: {compat.provider('torch_utils')}")

    gen_data = gan_refine.load_network_pkl(gen_pkl)
    teacher_data = gan_refine.load_network_pkl(teacher_pkl)
    print(f"\n{gen_pkl}\n{pickles.describe(gen_data)}")
    print(f"\n{teacher_pkl}\n{pickles.describe(teacher_data)}")
    gen, teacher = as_generator(gen_data), as_teacher(teacher_data)
    check_compatible(gen, teacher)
    print(f"\ngenerator and teacher match: {gen.img_resolution}px, {gen.img_channels} channels, "
          f"{gen.c_dim} labels")

    from gan_refine import cli
    cli_args = ["--gen", gen_pkl, "--teacher", teacher_pkl, "--outdir", args.outdir, "--kimg", str(args.kimg),
                "--snap", str(args.kimg), "--batch", "8", "--lr-gen", "1e-4", "--lr-fake", "1e-4",
                "--grid", "4", "--seed", "0"]
    print("\n$ gan-refine " + " ".join(cli_args))
    try:
        cli.main.main(args=cli_args, standalone_mode=False)
    except SystemExit as err:
        if err.code not in (0, None):
            raise
    run_dirs = sorted(d for d in os.listdir(args.outdir) if d[:5].isdigit())
    run_dir = os.path.join(args.outdir, run_dirs[-1])
    finals = sorted(f for f in os.listdir(run_dir) if f.endswith(".pkl"))
    refined = gan_refine.load_network_pkl(os.path.join(run_dir, finals[-1]))
    z = torch.randn(4, gen.z_dim, generator=torch.Generator().manual_seed(0))
    c = torch.zeros(4, 0)
    before = gen_data["G_ema"](z, c, noise_mode="const")
    after = refined["G_ema"](z, c, noise_mode="const")
    change = ((after - before).norm() / before.norm()).item()
    print(f"\nexported: {os.path.join(run_dir, finals[-1])}")
    print(f"relative change of G_ema's images after refinement: {change:.3e}")
    meta = refined["gan_refine"]
    print(f"refine metadata: {json.dumps({k: meta.get(k) for k in ('gan_refine_version', 'torch_version', 'method', 'step')})}")
    print(f"ops paths: {custom_ops.report()}")
    print(f"self-check passed in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
