"""Refine a generator from inside a StyleGAN2-ADA (or StyleGAN3) checkout with the Python API.

Copy this file into the root of your stylegan2-ada-pytorch checkout and run, e.g.

    python refine_in_stylegan_repo.py --network cifar10u.pkl \
        --teacher edm-cifar10-32x32-uncond-vp --steps 2000 --out cifar10u-refined.pkl

The generator is loaded with the checkout's own `legacy.load_network_pkl`; gan_refine gets the
module itself (not a path), refines it step by step while this script does its own logging,
and hands back the refined module (same class, usable at once with the checkout's code) and a
pickle in the original layout that `generate.py` and `calc_metrics.py` load unchanged.
"""

import argparse

import torch

import gan_refine  # first: provides dnnlib/torch_utils only if the checkout has none
import dnnlib  # the checkout's own
import legacy  # the checkout's own
from gan_refine.refiner import Refiner


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", required=True, help="StyleGAN network pickle (path or URL)")
    p.add_argument("--teacher", required=True, help="EDM network pickle: path, URL or name")
    p.add_argument("--steps", type=int, default=1000, help="generator updates")
    p.add_argument("--batch", type=int, default=64, help="images per update")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate of both networks")
    p.add_argument("--log-every", type=int, default=100, help="print statistics every N steps")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    p.add_argument("--out", required=True, help="where to write the refined network pickle")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    # 1. The user's own loading code, unchanged.
    with dnnlib.util.open_url(args.network) as f:
        data = legacy.load_network_pkl(f)
    G = data["G_ema"]

    # 2. A teacher: any EDM pickle dict (or its 'ema' module, or your own denoiser callable).
    teacher = gan_refine.load_network_pkl(args.teacher)

    # 3. Hand over the module; the Refiner works on its own copy and leaves G untouched.
    refiner = Refiner(G, teacher, batch=args.batch, lr_gen=args.lr, lr_fake=args.lr,
                      device=args.device)

    # 4. Step by step, with our own logging (or simply: refiner.run(steps=args.steps)).
    for stats in refiner.iterate(steps=args.steps):
        if stats["step"] % args.log_every == 0 or stats["step"] == args.steps:
            print(f"step {stats['step']:6d}  kimg {stats['kimg']:8.3f}  "
                  f"ikl {stats['loss/generator']:+.4f}  fake {stats['loss/fake_score']:.4f}  "
                  f"|D_phi - D_T| {stats['gap/mean']:.4f}  {stats['images_per_sec']:.0f} img/s")

    # 5. The refined module: the checkout's own Generator class, refined (EMA) weights.
    G_refined = refiner.refined_generator()
    z = torch.randn([4, G_refined.z_dim], device=refiner.device)
    c = torch.zeros([4, G_refined.c_dim], device=refiner.device)
    if G_refined.c_dim:
        c[:, 0] = 1
    with torch.no_grad():
        images = G_refined(z, c, truncation_psi=1, noise_mode="const")
    print(f"refined generator makes {tuple(images.shape)} images")

    # 6. A pickle in the input's layout (G_ema and G refined, D and the rest kept).
    refiner.export_pickle(args.out, base=data)
    print(f"wrote {args.out}")
    return G_refined


if __name__ == "__main__":
    main()
