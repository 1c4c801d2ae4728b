"""Diff-Instruct's CIFAR-10 GAN experiment in one command (Luo et al. 2023, Table: StyleGAN2-ADA
refined with Diff-Instruct; figures to reach: FID 2.92 -> 2.71 unconditional, 2.42 -> 2.27
conditional).

    python benchmarks/reproduce_paper.py                  # a GPU machine with internet
    python benchmarks/reproduce_paper.py --smoke          # a CPU rehearsal, offline, minutes

What it does, for the unconditional and the conditional pair:
1. fetches NVIDIA's StyleGAN2-ADA CIFAR-10 generator, the matching EDM teacher (VP, DDPM++),
   the Inception-v3 detector and EDM's CIFAR-10 reference statistics into the dnnlib cache,
   by their names in pretrained_urls.json (only the files the table names);
2. refines with `torchrun --nproc_per_node <GPUs> -m gan_refine.cli` at the official
   Diff-Instruct settings (batch 128, Adam lr 1e-5 for both networks, betas (0, 0.999),
   1:1 alternation, EDM's log-normal noise levels);
3. measures fid50k_full before refining and at every snapshot, as EDM does (50,000 images,
   seeds 0-49999, the Inception pool features, EDM's training-set statistics), computed in
   parallel on every process, and prints the table with the paper's figures beside it.
EDM reports the best of three FID runs; this script reports one run per snapshot (the
`--seeds` of the evaluation are fixed) and the best snapshot.

--smoke replaces the downloads with random-initialised networks of the CIFAR-10 sizes (our
StyleGAN2-like generator at the upstream 'cifar' config, about 20M parameters, and a DDPM++
teacher of about 56M), a randomly initialised TorchScript feature network and random reference
images, then runs 2 processes on the CPU (gloo, 127.0.0.1) for a few steps and a few hundred
images: the same commands end to end, figures meaningless.
"""

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time

PAPER = {"uncond": (2.92, 2.71), "cond": (2.42, 2.27)}
PAIRS = {"uncond": ("stylegan2-ada-cifar10u", "edm-cifar10-32x32-uncond-vp"),
         "cond": ("stylegan2-ada-cifar10", "edm-cifar10-32x32-cond-vp")}
DETECTOR, FID_REF = "inception-2015-12-05", "fid-ref-cifar10-32x32"
# The official Diff-Instruct README run (also our RefineConfig defaults).
OFFICIAL = ["--batch", "128", "--lr-gen", "1e-5", "--lr-fake", "1e-5", "--betas", "0", "0.999",
            "--p-mean", "-1.2", "--p-std", "1.2", "--fake-updates", "1"]


def fetch(names):
    """Download the table's files into the dnnlib cache (once); returns name -> local path."""
    from gan_refine import pretrained
    from gan_refine.compat.dnnlib import util
    paths = {}
    for name in names:
        entry = pretrained.lookup(name)
        if entry is None:
            sys.exit(f"error: {name!r} is not in pretrained_urls.json")
        print(f"fetching {name} ...", file=sys.stderr, flush=True)
        paths[name] = util.open_url(entry["url"], return_filename=True, cache=True)
    return paths


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc, args):
    """The launch line: one node, every process on this machine, rendezvous on loopback."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
            str(nproc), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
            "--local-addr", "127.0.0.1", "-m", "gan_refine.cli"] + [str(a) for a in args]


def _random_features_class():
    import torch

    class RandomFeatures(torch.nn.Module):
        """uint8 images in, 64 features out: a stand-in for Inception that needs no download."""

        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU(),
                                           torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())

        def forward(self, x):
            return self.net(x.to(torch.float32) / 127.5 - 1)
    return RandomFeatures


def _RandomFeatures():
    return _random_features_class()()


def make_smoke_inputs(workdir, cond):
    """CIFAR-10-size random networks, a random feature network and random reference images."""
    import numpy as np
    import torch
    from gan_refine import nets
    from gan_refine.pickles import save_network_pkl
    os.makedirs(workdir, exist_ok=True)
    tag = "cond" if cond else "uncond"
    gen, teacher = os.path.join(workdir, f"gen-{tag}.pkl"), os.path.join(workdir, f"teacher-{tag}.pkl")
    if not os.path.exists(gen):
        G = nets.stylegan2_cifar10(c_dim=10 if cond else 0, seed=0)
        save_network_pkl(nets.stylegan2_pkl_dict(res=32, c_dim=10 if cond else 0, G=G), gen)
    if not os.path.exists(teacher):
        net = nets.edm_ddpmpp_cifar10(label_dim=10 if cond else 0, seed=3)
        save_network_pkl(nets.edm_pkl_dict(res=32, label_dim=10 if cond else 0, net=net), teacher)
    detector = os.path.join(workdir, "random-features.pt")
    if not os.path.exists(detector):
        torch.manual_seed(0)
        scripted = torch.jit.trace(_RandomFeatures().eval(), torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
        torch.jit.save(scripted, detector)
    ref = os.path.join(workdir, "random-reference.npy")
    if not os.path.exists(ref):
        images = np.random.default_rng(0).integers(0, 256, size=(256, 32, 32, 3), dtype=np.uint8)
        np.save(ref, images)
    return gen, teacher, detector, ref


def refine(kind, args):
    """One refinement run; returns (run folder, metrics.jsonl records)."""
    outdir = os.path.join(args.outdir, kind)
    if args.smoke:
        gen, teacher, detector, ref = make_smoke_inputs(os.path.join(args.outdir, "smoke-inputs"),
                                                        kind == "cond")
        # Two "GPUs" on the CPU, a global batch of 4, one step, a hundred-odd images.
        cli = ["--gen", gen, "--teacher", teacher, "--batch", "4", "--kimg", "0.004", "--snap",
               "0.004", "--grid", "2", "--device", "cpu", "--metrics", "fid",
               "--metrics-ref", ref, "--metrics-detector", detector, "--metrics-num", "128"]
        nproc = 2
    else:
        g_name, t_name = PAIRS[kind]
        fetch([g_name, t_name, DETECTOR, FID_REF])
        cli = ["--gen", g_name, "--teacher", t_name] + OFFICIAL + [
            "--kimg", str(args.kimg), "--snap", str(args.snap), "--metrics", "fid",
            "--metrics-ref", FID_REF, "--metrics-detector", DETECTOR, "--metrics-num", "50000",
            "--precision", args.precision]
        nproc = args.nproc or _gpu_count()
    cmd = torchrun(nproc, cli + ["--outdir", outdir])
    print("$ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    env = dict(os.environ)
    if args.smoke:
        env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    t0 = time.time()
    done = subprocess.run(cmd, env=env)
    if done.returncode != 0:
        sys.exit(f"error: the {kind} refinement failed (exit status {done.returncode}); its "
                 f"output above says why")
    runs = sorted(os.listdir(outdir))
    run_dir = os.path.join(outdir, runs[-1])
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return run_dir, records, time.time() - t0


def _gpu_count():
    import torch
    n = torch.cuda.device_count()
    if n == 0:
        sys.exit("error: no CUDA device here; the full experiment needs GPUs (use --smoke to "
                 "rehearse it on the CPU)")
    return n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU rehearsal with random networks (offline)")
    ap.add_argument("--pairs", default="uncond,cond", help="which pairs: uncond, cond or both")
    ap.add_argument("--kimg", type=float, default=5000, help="refinement length per pair, in kimg")
    ap.add_argument("--snap", type=float, default=500, help="snapshot (and FID) interval, in kimg")
    ap.add_argument("--nproc", type=int, default=None, help="processes (default: every local GPU)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--outdir", default="runs/reproduce-paper")
    args = ap.parse_args(argv)
    rows = []
    for kind in [p.strip() for p in args.pairs.split(",") if p.strip()]:
        if kind not in PAIRS:
            ap.error(f"--pairs: unknown pair {kind!r}; use uncond and/or cond")
        run_dir, records, seconds = refine(kind, args)
        before = records[0]["results"]["fid"]
        best = min(r["results"]["fid"] for r in records[1:]) if len(records) > 1 else float("nan")
        rows.append(dict(pair=kind, before=before, after_best=best, after_last=records[-1]["results"]["fid"],
                         paper_before=PAPER[kind][0], paper_after=PAPER[kind][1], run_dir=run_dir,
                         minutes=round(seconds / 60, 1), smoke=args.smoke))
    print("\n| pair | FID before | FID after (best snapshot) | paper before -> after | run |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pair']} | {r['before']:.3f} | {r['after_best']:.3f} | "
              f"{r['paper_before']} -> {r['paper_after']} | {r['run_dir']} ({r['minutes']} min) |")
    if args.smoke:
        print("\n(smoke run: random networks and a random detector; the figures mean nothing)")
    with open(os.path.join(args.outdir, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
