"""`gan-refine-generate`: PNG images from any network pickle gan_refine loads, refined or not.

    gan-refine-generate --network refined.pkl --seeds 0-63 --outdir out/           # seed0000.png ...
    gan-refine-generate --network digits --seeds 0-63 --outdir out/ --grid-only    # out/grid.png
    gan-refine-generate --network cond.pkl --seeds 0-9 --class 3 --trunc 0.7 --outdir out/
    gan-refine-generate --network digits-edm --seeds 0-15 --steps 18 --outdir out/ # EDM's Heun sampler

StyleGAN pickles (G_ema / G): seed s gives z = np.random.RandomState(s).randn(z_dim), as in
StyleGAN's gen_images.py, and the generator is called with the given truncation psi and noise
mode. EDM pickles (ema): seed s gives latents np.random.RandomState(s).randn(C, H, W) (the
convention of gan_refine's other samplers), integrated by EDM's deterministic Heun sampler.
Images are quantised as upstream saves them: (x * 127.5 + 128).clamp(0, 255) to uint8.
"""

import math
import os
import sys

import click
import numpy as np

from .seeds import SeedList

__all__ = ["main", "generator_images", "teacher_images", "class_labels", "NOISE_MODES"]

NOISE_MODES = ("const", "random", "none")
_CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100, show_default=True)


def _fail(message):
    raise click.ClickException(" ".join(str(message).split()))


# ----------------------------------------------------------------------------
# Library functions: images for a list of seeds, in seed order.

def class_labels(n, label_dim, class_idx, device):
    """[n, label_dim] one-hot rows of `class_idx` (a [n, 0] tensor for unconditional nets)."""
    import torch
    c = torch.zeros([n, label_dim], dtype=torch.float32, device=device)
    if label_dim:
        c[:, class_idx] = 1
    return c


def generator_images(G, seeds, class_idx=None, batch=32, device=None, progress=None):
    """Yield (seeds, float images [B, C, H, W] in [-1, 1]) from a gan_refine generator adapter.

    z for seed s is np.random.RandomState(s).randn(z_dim). StyleGAN's 'random' noise draws from
    torch's RNG, seeded with the first seed of each batch (and restored afterwards), so a run
    repeats exactly for a given --batch.
    """
    import torch
    device = device or G.device
    cuda = [device.index or 0] if torch.device(device).type == "cuda" else []
    for start in range(0, len(seeds), batch):
        chunk = seeds[start:start + batch]
        z = np.stack([np.random.RandomState(s).randn(G.z_dim) for s in chunk])
        z = torch.from_numpy(z.astype(np.float32)).to(device)
        c = class_labels(len(chunk), G.c_dim, class_idx, device)
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            torch.manual_seed(chunk[0])
            images = G(z, c)
        if progress is not None:
            progress.update(len(chunk))
        yield chunk, images


def teacher_images(T, seeds, class_idx=None, batch=32, device=None, num_steps=18, sigma_min=0.002,
                   sigma_max=80.0, rho=7.0, progress=None):
    """Yield (seeds, float images) sampled from a teacher adapter with EDM's Heun sampler.

    Latents for seed s are np.random.RandomState(s).randn(C, H, W); the noise levels are EDM's
    (Karras) schedule, clipped to the range the network supports.
    """
    import torch

    from .zoo.edm_sampler import heun_sample
    device = device or T.device
    shape = [T.img_channels, T.img_resolution, T.img_resolution]
    for start in range(0, len(seeds), batch):
        chunk = seeds[start:start + batch]
        latents = torch.from_numpy(np.stack([np.random.RandomState(s).randn(*shape) for s in chunk]))
        c = class_labels(len(chunk), T.label_dim, class_idx, device) if T.label_dim else None
        with torch.no_grad():
            images = heun_sample(T, latents.to(device), c, num_steps=num_steps, sigma_min=sigma_min,
                                 sigma_max=sigma_max, rho=rho)
        if progress is not None:
            progress.update(len(chunk))
        yield chunk, images


# ----------------------------------------------------------------------------
# Command line.

@click.command(context_settings=_CONTEXT)
@click.option("--network", required=True, metavar="PKL|URL|NAME",
              help="Network pickle (StyleGAN2-ADA, StyleGAN3 or EDM layout): path, URL or name from "
                   "pretrained_urls.json.")
@click.option("--outdir", required=True, type=click.Path(file_okay=False),
              help="Folder for seed%04d.png files and grid.png (created if missing).")
@click.option("--seeds", type=SeedList(), default="0-63", help="Seeds, e.g. 0-49999 or 0,5,10-20.")
@click.option("--class", "class_idx", type=int, default=None, metavar="INT",
              help="Class index; required for conditional networks, refused for unconditional ones.  "
                   "[default: none]")
@click.option("--trunc", "truncation_psi", type=float, default=1.0,
              help="StyleGAN truncation psi (1 = none, 0 = the average image).")
@click.option("--noise-mode", type=click.Choice(NOISE_MODES), default="const",
              help="StyleGAN2 noise inputs: the stored constants, fresh random noise, or none.")
@click.option("--key", type=click.Choice(["G_ema", "G"]), default="G_ema",
              help="Which generator of a StyleGAN pickle to run.")
@click.option("--steps", "num_steps", type=click.IntRange(min=1), default=18,
              help="EDM pickles: Heun sampler steps (2 * steps - 1 network evaluations).")
@click.option("--sigma-min", type=click.FloatRange(min=0, min_open=True), default=0.002,
              help="EDM pickles: lowest noise level (raised to the network's own minimum).")
@click.option("--sigma-max", type=click.FloatRange(min=0, min_open=True), default=80.0,
              help="EDM pickles: highest noise level (lowered to the network's own maximum).")
@click.option("--rho", type=click.FloatRange(min=0, min_open=True), default=7.0,
              help="EDM pickles: time-step exponent of the schedule.")
@click.option("--grid", "grid", is_flag=True,
              help="Also write grid.png holding every image in seed order.")
@click.option("--grid-only", is_flag=True, help="Write grid.png only, no per-seed files.")
@click.option("--grid-cols", type=click.IntRange(min=1), default=None,
              help="Images per grid row.  [default: a square-ish grid]")
@click.option("--batch", type=click.IntRange(min=1), default=32, help="Images per network call.")
@click.option("--device", default="auto",
              help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr.  [default: when stderr is a terminal]")
@click.pass_context
def main(ctx, network, outdir, seeds, class_idx, truncation_psi, noise_mode, key, num_steps,
         sigma_min, sigma_max, rho, grid, grid_only, grid_cols, batch, device, progress):
    """Generate images from a GAN or EDM network pickle, one PNG per seed and/or one grid."""
    given = {name for name in ctx.params
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    if sigma_min >= sigma_max:
        _fail(f"--sigma-min {sigma_min:g} must be below --sigma-max {sigma_max:g}")
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        _fail(f"--outdir {outdir} is a file; give a folder")
    dev = _device(device)

    from .pickles import load_network_pkl, pickle_layout, resolve_source
    try:
        target = resolve_source(network)
        data = load_network_pkl(target)
    except FileNotFoundError:
        _fail(f"--network: no such file: {network} (give a path, a URL or a name from "
              f"pretrained_urls.json)")
    except (OSError, ValueError) as err:  # unknown names, downloads, corrupt or foreign files
        text = str(err).strip()
        _fail(f"--network: {text.splitlines()[0] if text else type(err).__name__}")

    if pickle_layout(data) == "edm":
        wrong = sorted(given & {"truncation_psi", "noise_mode", "key"})
        if wrong:
            _fail(f"{_flags(wrong)} apply to StyleGAN pickles; {network} is an EDM diffusion pickle "
                  f"(sampled with --steps)")
        net, what = _teacher(data), "EDM denoiser"
        label_dim = net.label_dim
    else:
        wrong = sorted(given & {"num_steps", "sigma_min", "sigma_max", "rho"})
        if wrong:
            _fail(f"{_flags(wrong)} apply to EDM diffusion pickles; {network} is a GAN pickle")
        net, what = _generator(data, key, truncation_psi, noise_mode, network), "generator"
        label_dim = net.c_dim
    if label_dim and class_idx is None:
        _fail(f"the {what} is class-conditional ({label_dim} classes): give --class 0..{label_dim - 1}")
    if not label_dim and class_idx is not None:
        _fail(f"the {what} is unconditional: drop --class")
    if label_dim and not 0 <= class_idx < label_dim:
        _fail(f"--class {class_idx} is out of range: the {what} has classes 0..{label_dim - 1}")

    net = net.to(dev).eval().requires_grad_(False)
    write_seeds = not grid_only
    write_grid = grid or grid_only
    os.makedirs(outdir, exist_ok=True)
    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm.auto import tqdm
    bar = tqdm(total=len(seeds), unit="img", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)
    if pickle_layout(data) == "edm":
        batches = teacher_images(net, seeds, class_idx, batch, dev, num_steps, sigma_min, sigma_max,
                                 rho, progress=bar)
    else:
        batches = generator_images(net, seeds, class_idx, batch, dev, progress=bar)

    from .images import image_grid, save_png, to_uint8
    kept = []
    try:
        for chunk, images in batches:
            arr = to_uint8(images)
            if write_grid:
                kept.append(arr)
            if write_seeds:
                _check_channels(arr)
                for s, img in zip(chunk, arr):
                    save_png(img, os.path.join(outdir, f"seed{s:04d}.png"))
    except OSError as err:
        _fail(err)
    finally:
        bar.close()
    written = []
    if write_seeds:
        written.append(f"{len(seeds)} images (seed{seeds[0]:04d}.png ...)")
    if write_grid:
        path = save_png(image_grid(np.concatenate(kept), cols=grid_cols),
                        os.path.join(outdir, "grid.png"))
        cols = grid_cols or int(math.ceil(math.sqrt(len(seeds))))
        written.append(f"{os.path.basename(path)} ({min(cols, len(seeds))} per row)")
    click.echo(f"Wrote {' and '.join(written)} to {outdir}", err=True)


def _flags(names):
    spelled = dict(truncation_psi="--trunc", noise_mode="--noise-mode", key="--key",
                   num_steps="--steps", sigma_min="--sigma-min", sigma_max="--sigma-max", rho="--rho")
    return ", ".join(spelled[n] for n in names)


def _device(text):
    import torch

    from .metrics.detectors import auto_device
    try:
        dev = auto_device(text)
    except RuntimeError as err:
        _fail(f"--device {text!r} is not a torch device ({str(err).splitlines()[0]})")
    if dev.type == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {text}: CUDA is not available here; use --device cpu (or auto)")
    return dev


def _generator(data, key, truncation_psi, noise_mode, network):
    from .adapters import as_generator, is_stylegan_generator
    if key not in data:
        _fail(f"--key {key}: {network} has no {key!r} entry (keys: {', '.join(map(str, data))})")
    module = data[key]
    kw = {}
    if is_stylegan_generator(module):
        kw = dict(truncation_psi=truncation_psi, noise_mode=noise_mode)
    elif truncation_psi != 1:
        _fail(f"--trunc needs a StyleGAN generator; {type(module).__name__} has no mapping network")
    try:
        return as_generator(module, **kw)
    except (TypeError, ValueError) as err:
        _fail(f"--network: {err}")


def _teacher(data):
    from .adapters import as_teacher
    try:
        return as_teacher(data)
    except (TypeError, ValueError) as err:
        _fail(f"--network: {err}")


def _check_channels(arr):
    if arr.shape[-1] not in (1, 3):
        _fail(f"the network makes {arr.shape[-1]}-channel images, which PNG cannot hold; use "
              f"--grid-only for a preview of the first channels")


if __name__ == "__main__":  # pragma: no cover
    main()  # pylint: disable=no-value-for-parameter
