"""`gan-refine-metrics`: FID / KID / precision-recall of a generator or image set.

    gan-refine-metrics --gen refined.pkl --ref cifar10-32x32.npz               # FID, 50k seeds
    gan-refine-metrics --gen refined.pkl --ref train/ --metrics fid50k_full,kid50k_full,pr50k3_full
    gan-refine-metrics --images samples/ --ref train/ --metrics fid,kid,pr --num 10000
    gan-refine-metrics --images train/ --save-ref-stats train-stats.npz        # a reference file

Prints one JSON line of results on stdout (progress goes to stderr); the line names the
detector behind every figure.
"""

import json
import os
import sys
import warnings

import click

from ..seeds import SeedList

from ..compat.dnnlib.util import DownloadError

_CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


def _parse_metrics(text):
    """'fid,kid50k_full' -> (requested names, short metrics, images the aliases fix, keywords)."""
    from .protocol import resolve_metric_names
    try:
        metrics, num, kwargs = resolve_metric_names(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--metrics")
    requested = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    return requested, metrics, num, kwargs


@click.command(context_settings=_CONTEXT)
@click.option("--gen", "gen", metavar="PKL|URL|NAME",
              help="Generator network pickle (StyleGAN layout), URL or pretrained name.")
@click.option("--images", type=click.Path(exists=True), metavar="DIR|NPY|NPZ",
              help="Evaluate these images instead of a generator: a folder of PNG/JPG or a .npy/.npz "
                   "array (uint8, or float in [-1, 1]).")
@click.option("--ref", metavar="NPZ|DIR|NPY|NAME",
              help="Reference: statistics .npz with mu/sigma (FID only), a pretrained 'fid-ref' name "
                   "or URL, or real images (folder or array).")
@click.option("--metrics", "metrics_text", default="fid", show_default=True,
              help="Comma-separated: fid, kid, pr (precision/recall), or StyleGAN's names "
                   "fid50k_full, kid50k_full, pr50k3_full (50,000 images; pr50k3: k = 3).")
@click.option("--num", type=click.IntRange(min=2), default=None,
              help="Images to generate (seeds seed .. seed+num-1); a cap for --images.  [default: "
                   "what a --metrics alias fixes, else the reference's protocol (2,000 for the "
                   "digits reference), else 50,000]")
@click.option("--ref-num", type=click.IntRange(min=2), default=None,
              help="Cap on reference images (default: all of them).")
@click.option("--detector", default="auto", show_default=True,
              help="Registered detector name, TorchScript file or URL; auto = the one the "
                   "reference was made with, else Inception-v3 (inception-2015-12-05).")
@click.option("--pr-detector", default=None,
              help="Detector for precision/recall only, e.g. StyleGAN's VGG16 ('vgg16', or the "
                   "vgg16.pt file or URL).  [default: --detector]")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per generator/detector call.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="First generator seed; also seeds the KID subsets.")
@click.option("--seeds", type=SeedList(), default=None,
              help="Generator seeds as ranges, e.g. 0-49999 or 0,5,10-20 (overrides --seed and --num).")
@click.option("--device", default="auto", show_default=True,
              help="torch device ('cpu', 'cuda', 'cuda:1'); auto picks CUDA when present.")
@click.option("--kid-subsets", type=click.IntRange(min=1), default=100, show_default=True,
              help="Random subsets KID is averaged over.")
@click.option("--kid-subset-size", type=click.IntRange(min=2), default=1000, show_default=True,
              help="Samples per KID subset (fewer if fewer images).")
@click.option("--pr-k", type=click.IntRange(min=1), default=None,
              help="Neighbourhood size k for precision/recall.  [default: 3]")
@click.option("--save-ref-stats", type=click.Path(dir_okay=False), default=None,
              help="Write mu/sigma of the --gen/--images features to this .npz (EDM layout).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also append the JSON line to this file.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars on stderr (default: when stderr is a terminal).")
def main(gen, images, ref, metrics_text, num, ref_num, detector, pr_detector, batch, seed, seeds, device,
         kid_subsets, kid_subset_size, pr_k, save_ref_stats, out, progress):
    """FID/KID/precision-recall of a generator or image set against a reference."""
    requested, metrics, alias_num, alias_kw = _parse_metrics(metrics_text)
    if (gen is None) == (images is None):
        raise click.ClickException("give exactly one of --gen (a generator) or --images (a folder or array)")
    if ref is None and save_ref_stats is None:
        raise click.ClickException("nothing to do: give --ref to compute metrics, or --save-ref-stats "
                                   "to write reference statistics")
    if save_ref_stats is not None and not save_ref_stats.endswith(".npz"):
        raise click.ClickException(f"--save-ref-stats {save_ref_stats}: the file name must end in .npz")
    if images is not None and not (os.path.isdir(images) or images.endswith((".npy", ".npz"))):
        raise click.ClickException(f"--images {images}: give a folder of images or a .npy/.npz array")
    if ref is not None and os.path.exists(ref) and not (os.path.isdir(ref)
                                                        or ref.endswith((".npy", ".npz"))):
        raise click.ClickException(f"--ref {ref}: give a statistics .npz, a folder of images or a "
                                   f".npy/.npz image array")

    import torch
    try:
        device = "auto" if device == "auto" else str(torch.device(device))
    except RuntimeError as err:
        raise click.ClickException(f"--device {device!r} is not a torch device ({err})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.ClickException(f"--device {device}: CUDA is not available here; use --device cpu")
    if progress is None:
        progress = sys.stderr.isatty()
    from .protocol import ALIASES, STANDARD_NUM, default_detector, default_num
    # Explicit options win over what an alias fixes; say so, since the figure changes meaning.
    if num is not None and alias_num is not None and num != alias_num:
        aliases = ",".join(m for m in requested if m in ALIASES)
        click.echo(f"note: --num {num} replaces the {alias_num:,} generated images of {aliases}",
                   err=True)
    if seeds is not None:
        if gen is None:
            raise click.ClickException("--seeds picks generator latents; it needs --gen")
        num = len(seeds)
    if num is None:
        # An image set is capped at the standard count; a generator follows the reference's protocol.
        num = alias_num or (default_num(ref) if gen is not None and ref is not None else STANDARD_NUM)
    if ref_num is None and alias_kw.get("ref_num") is not None:
        ref_num = alias_kw["ref_num"]
    if pr_k is None:
        pr_k = alias_kw.get("pr_k", 3)
    if detector == "auto":
        detector = default_detector(ref)

    from .compute import compute_metrics
    try:
        G = _load_generator(gen, device) if gen is not None else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = compute_metrics(
                gen=G if G is not None else images, ref=ref, metrics=metrics, num=num,
                ref_num=ref_num, detector=detector, batch_size=batch, seed=seed, device=device,
                kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, pr_k=pr_k,
                progress=progress, save_ref_stats_path=save_ref_stats, pr_detector=pr_detector,
                seeds=seeds)
        for w in caught:
            if not issubclass(w.category, (DeprecationWarning, FutureWarning)):
                click.echo(f"warning: {w.message}", err=True)
    except click.ClickException:
        raise
    except DownloadError as err:
        raise click.ClickException(str(err))
    except (ValueError, TypeError, FileNotFoundError, OSError) as err:
        raise click.ClickException(_one_line(err))

    from .protocol import named_results
    record = dict(gen=gen, images=images, ref=ref, metrics=list(metrics) if ref else [])
    if ref and list(requested) != list(metrics):
        record["requested"] = list(requested)
    if save_ref_stats is not None:
        record["saved_ref_stats"] = save_ref_stats
    record.update(result)
    if ref:
        record["results"] = named_results(result, requested)
        if "pr" in metrics:
            record["pr_k"] = pr_k
    line = json.dumps(record)
    click.echo(line)
    if out is not None:
        with open(out, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _one_line(err):
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _load_generator(spec, device):
    from ..adapters import as_generator
    from ..pickles import load_network_pkl
    data = load_network_pkl(spec)
    if "G_ema" not in data and "G" not in data:
        raise ValueError(f"{spec} holds no generator (keys: {', '.join(map(str, data))}); "
                         f"--gen takes a StyleGAN-layout network pickle")
    net = data["G_ema"] if "G_ema" in data else data["G"]
    try:
        G = as_generator(net)
    except TypeError:
        from ..adapters import GenericGeneratorAdapter
        if not hasattr(net, "z_dim"):
            raise
        G = GenericGeneratorAdapter(net)
    return G.to(device if device != "auto" else _auto())


def _auto():
    from .detectors import auto_device
    return auto_device("auto")


if __name__ == "__main__":
    main()  # pylint: disable=no-value-for-parameter
