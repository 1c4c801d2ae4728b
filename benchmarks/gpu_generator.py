"""Whole-generator timing on a GPU: our CUDA ops vs the reference ops, side by side in one run.

Builds our StyleGAN2-like generator at the StyleGAN2-ADA CIFAR-10 configuration (~20M params,
fp16 in the top 4 resolutions, conv_clamp 256) and our StyleGAN3-like generator at 32x32, and
times forward and forward+backward at batch 64 with CUDA events (warm-up, median of repeats),
switching the ops between kernels and reference with GAN_REFINE_OPS. Also checks that both
paths give the same images (relative error) so a fast wrong kernel cannot pass unnoticed.

    python benchmarks/gpu_generator.py [--batch 64] [--repeats 20] [--out prefix]
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gan_refine  # noqa: E402
from gan_refine import nets  # noqa: E402
from gan_refine.snapshot import atomic_write_text  # noqa: E402
from gpu_check import timed  # noqa: E402  (this folder is sys.path[0] when run as a script)


def bench(name, G, batch, repeats):
    dev = torch.device("cuda")
    G = G.to(dev).train().requires_grad_(True)
    gen = torch.Generator(device=dev).manual_seed(0)
    z = torch.randn(batch, G.z_dim, device=dev, generator=gen)
    c = torch.zeros(batch, G.c_dim, device=dev)
    kw = {"noise_mode": "const"}

    def fwd():
        with torch.no_grad():
            return G(z, c, **kw)

    def fwd_bwd():
        img = G(z, c, **kw)
        img.square().mean().backward()

    rows = {}
    outs = {}
    for path in ("cuda", "ref"):
        os.environ["GAN_REFINE_OPS"] = "ref" if path == "ref" else ""
        outs[path] = fwd().float()
        rows[path] = {"fwd_ms": timed(fwd, dev, 3, repeats), "fwd_bwd_ms": timed(fwd_bwd, dev, 3, repeats)}
    os.environ["GAN_REFINE_OPS"] = ""
    rel = ((outs["cuda"] - outs["ref"]).norm() / outs["ref"].norm()).item()
    from torch_utils import custom_ops
    result = {
        "name": name, "batch": batch, "params": sum(p.numel() for p in G.parameters()),
        "rel_err_cuda_vs_ref": rel,
        "ms": rows,
        "speedup_fwd": rows["ref"]["fwd_ms"] / rows["cuda"]["fwd_ms"],
        "speedup_fwd_bwd": rows["ref"]["fwd_bwd_ms"] / rows["cuda"]["fwd_bwd_ms"],
        "paths": dict(custom_ops.report()) if hasattr(custom_ops, "report") else None,
    }
    print(json.dumps(result), flush=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    results = [
        bench("stylegan2 cifar10 G", nets.stylegan2_cifar10(), args.batch, args.repeats),
        bench("stylegan3 32px G", nets.stylegan3_cifar10(), args.batch, args.repeats),
    ]
    lines = ["| generator | batch | rel err cuda vs ref | fwd ms (cuda / ref) | fwd+bwd ms (cuda / ref) | speed-up fwd+bwd |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['batch']} | {r['rel_err_cuda_vs_ref']:.2e} | "
                     f"{r['ms']['cuda']['fwd_ms']:.2f} / {r['ms']['ref']['fwd_ms']:.2f} | "
                     f"{r['ms']['cuda']['fwd_bwd_ms']:.2f} / {r['ms']['ref']['fwd_bwd_ms']:.2f} | "
                     f"{r['speedup_fwd_bwd']:.2f}x |")
    print("\n".join(lines))
    if args.out:
        atomic_write_text(args.out + ".json", json.dumps(results, indent=1))
        atomic_write_text(args.out + ".md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
