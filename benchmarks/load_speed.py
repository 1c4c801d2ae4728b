"""Time gan_refine.load_network_pkl against a plain upstream-style unpickler on a large pickle.

Upstream's loader (legacy.load_network_pkl) is a pickle.Unpickler subclass whose find_class
only remaps TensorFlow names; this script builds a persistent network of the requested size
(default ~250 MB of float32 weights over a few hundred tensors, like a StyleGAN pickle),
saves it, and times both loaders alternately (median of repeats, page cache warm).

    python benchmarks/load_speed.py [--mb 250] [--repeats 5]
"""

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import textwrap
import time

import torch

import gan_refine
from gan_refine.pickles import load_network_pkl, save_network_pkl

NET_SRC = textwrap.dedent('''\
    import torch
    from torch_utils import persistence

    @persistence.persistent_class
    class Block(torch.nn.Module):
        def __init__(self, ch):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(ch, ch, 3, 3))
            self.bias = torch.nn.Parameter(torch.zeros(ch))
            self.register_buffer("noise_const", torch.randn(16, 16))

    @persistence.persistent_class
    class Net(torch.nn.Module):
        def __init__(self, ch, blocks):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(ch) for _ in range(blocks)])
    ''')


class _UpstreamStyleUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith("dnnlib.tflib"):
            raise RuntimeError("tf pickle")
        return super().find_class(module, name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=250.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "bench_net.py"), "w") as f:
            f.write(NET_SRC)
        sys.path.insert(0, tmp)
        import bench_net
        ch = 256
        per_block = (ch * ch * 9 + ch + 256) * 4
        blocks = max(1, int(args.mb * 2**20 / per_block / 3))  # G, D-sized copy and G_ema
        torch.manual_seed(0)
        net = bench_net.Net(ch, blocks).eval().requires_grad_(False)
        data = {"training_set_kwargs": None, "G": net, "D": bench_net.Net(ch, blocks),
                "G_ema": bench_net.Net(ch, blocks), "augment_pipe": None}
        path = os.path.join(tmp, "big.pkl")
        save_network_pkl(data, path)
        size = os.path.getsize(path) / 2**20

        def upstream():
            with open(path, "rb") as f:
                return _UpstreamStyleUnpickler(f).load()

        def ours():
            return load_network_pkl(path)

        upstream(), ours()  # warm the page cache and the source modules
        times = {"upstream-style": [], "gan_refine": []}
        for _ in range(args.repeats):
            for label, fn in (("upstream-style", upstream), ("gan_refine", ours)):
                t0 = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"pickle size: {size:.0f} MiB, {3 * blocks} blocks, torch {torch.__version__}")
        print("| loader | median s | min s |")
        print("|---|---|---|")
        for k, v in times.items():
            print(f"| {k} | {med[k]:.3f} | {min(v):.3f} |")
        print(f"ratio gan_refine / upstream-style: {med['gan_refine'] / med['upstream-style']:.3f}")


if __name__ == "__main__":
    main()
