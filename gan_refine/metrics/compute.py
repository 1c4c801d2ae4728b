"""Feature extraction over generators, image folders and arrays; reference statistics files.

The protocol is the StyleGAN/EDM one: generated images come from seeds s, s+1, ... with
z = np.random.RandomState(seed).randn(z_dim) (labels, for conditional generators, drawn
uniformly from the same per-seed stream), are quantised to uint8 with
(x * 127.5 + 128).clamp(0, 255), and fed to the detector; mean and covariance of the
features are kept in float64. Reference statistics use EDM's `.npz` layout (`mu`, `sigma`).
"""

import io
import os
import time
import warnings

import numpy as np
import torch

from ..compat.dnnlib import util as dl
from .detectors import auto_device, get_detector
from .stats import FeatureStats, frechet_distance, kernel_inception_distance, precision_recall

__all__ = ["quantize", "GeneratorSource", "FolderSource", "ArraySource", "open_images",
           "compute_feature_stats", "load_ref_stats", "save_ref_stats", "compute_metrics",
           "is_stats_source", "check_reference", "METRICS", "IMAGE_EXTENSIONS"]

METRICS = ("fid", "kid", "pr")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def quantize(x):
    """[-1, 1] float images -> uint8, exactly as StyleGAN/EDM save and evaluate them.

    NaN maps to mid grey (128) and +-inf to the ends, so a diverged sample counts as a bad
    image instead of undefined bytes.
    """
    x = torch.nan_to_num(x.to(torch.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    return (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------
# Image sources: each yields uint8 [B, C, H, W] tensors.

class GeneratorSource:
    """Images from a generator `G(z, c) -> [-1, 1]` over seeds seed .. seed + num - 1."""

    def __init__(self, G, num, seed=0, device=None):
        self.G = _as_generator(G)
        self.num_items = int(num)
        self.seed = int(seed)
        # A module generates where its weights are; `device` only places plain callables' inputs.
        has_weights = isinstance(self.G, torch.nn.Module) and any(True for _ in self.G.parameters())
        self.device = _module_device(self.G) if has_weights or device is None else auto_device(device)
        self.z_dim = int(self.G.z_dim)
        self.c_dim = int(getattr(self.G, "c_dim", 0) or 0)

    def latents(self, seeds):
        """(z [B, z_dim] float32, c [B, c_dim] one-hot float32) for these seeds, on the CPU."""
        z = np.empty([len(seeds), self.z_dim], dtype=np.float64)
        c = np.zeros([len(seeds), self.c_dim], dtype=np.float32)
        for i, s in enumerate(seeds):
            rs = np.random.RandomState(s)
            z[i] = rs.randn(self.z_dim)
            if self.c_dim:
                c[i, rs.randint(self.c_dim)] = 1
        return torch.from_numpy(z.astype(np.float32)), torch.from_numpy(c)

    def iter_batches(self, batch_size):
        modules = list(self.G.modules()) if isinstance(self.G, torch.nn.Module) else []
        modes = [(m, m.training) for m in modules]
        for m in modules:
            m.training = False
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            for start in range(0, self.num_items, batch_size):
                seeds = range(self.seed + start, self.seed + min(start + batch_size, self.num_items))
                z, c = self.latents(seeds)
                # Per-batch RNG state: noise inputs (StyleGAN 'random' noise) repeat across runs
                # without disturbing the caller's random stream.
                with torch.no_grad(), torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seeds[0])
                    img = self.G(z.to(self.device), c.to(self.device))
                if not torch.is_tensor(img) or img.ndim != 4 or img.shape[0] != len(seeds):
                    got = tuple(img.shape) if torch.is_tensor(img) else type(img).__name__
                    raise ValueError(f"the generator returned {got} for {len(seeds)} latents; "
                                     f"expected NCHW images")
                yield quantize(img)
        finally:
            for m, mode in modes:
                m.training = mode


def _module_device(G):
    if isinstance(G, torch.nn.Module):
        for t in G.parameters():
            return t.device
        for t in G.buffers():
            return t.device
    return torch.device("cpu")


def _as_generator(G):
    """A GeneratorAdapter where the adapters know the object, else the object itself."""
    from ..adapters import GeneratorAdapter, GenericGeneratorAdapter, as_generator
    if isinstance(G, GeneratorAdapter):
        return G
    if isinstance(G, (dict, str, os.PathLike)):
        return as_generator(G)
    if isinstance(G, torch.nn.Module):
        try:
            return as_generator(G)
        except TypeError:
            if hasattr(G, "z_dim"):
                return GenericGeneratorAdapter(G)
            raise
    if callable(G) and hasattr(G, "z_dim"):
        return G
    raise TypeError(f"cannot use {type(G).__name__} as a generator: it needs z_dim (and c_dim) "
                    f"and must be callable as G(z, c)")


def _list_images(folder):
    files = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        files += [os.path.join(root, n) for n in sorted(names)
                  if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
    return files


class FolderSource:
    """PNG/JPG/... files under a folder (recursively, in sorted order), read with pillow.

    All images must share one size. Greyscale files stay 1-channel when every file is
    greyscale; otherwise everything is read as RGB.
    """

    def __init__(self, folder, max_items=None):
        from PIL import Image
        self.folder = os.fspath(folder)
        self.files = _list_images(self.folder)
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {self.folder}")
        if max_items is not None:
            self.files = self.files[:int(max_items)]
        self.num_items = len(self.files)
        with Image.open(self.files[0]) as im:
            grey = im.mode in ("1", "L", "I", "I;16", "F")
        self.mode = "L" if grey and all(_is_grey(f) for f in self.files) else "RGB"

    def iter_batches(self, batch_size):
        from PIL import Image
        size = None
        for start in range(0, self.num_items, batch_size):
            arrs = []
            for path in self.files[start:start + batch_size]:
                with Image.open(path) as im:
                    a = np.asarray(im.convert(self.mode), dtype=np.uint8)
                if size is None:
                    size = a.shape
                elif a.shape != size:
                    raise ValueError(f"{path} is {a.shape[1]}x{a.shape[0]} but earlier images are "
                                     f"{size[1]}x{size[0]}; resize the folder to one size first")
                arrs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            yield torch.from_numpy(np.stack(arrs))


def _is_grey(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.mode in ("1", "L", "I", "I;16", "F")


class ArraySource:
    """Images from a numpy array or a .npy/.npz file.

    uint8 arrays are taken as they are; float arrays are taken to be in [-1, 1] and quantised
    like generator output. Layouts: [N, H, W] (greyscale), [N, H, W, C] or [N, C, H, W] with
    C in {1, 3}. A .npz file must hold one array, or one named `images`, `x` or `arr_0`.
    """

    def __init__(self, array, max_items=None):
        if isinstance(array, (str, os.PathLike)):
            array = _load_array_file(os.fspath(array))
        a = np.asarray(array) if not isinstance(array, np.memmap) else array
        if a.ndim == 3:
            a = a[:, None]
        elif a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
            a = a.transpose(0, 3, 1, 2)
        elif not (a.ndim == 4 and a.shape[1] in (1, 3)):
            raise ValueError(f"image array has shape {a.shape}; expected [N, H, W], [N, H, W, C] "
                             f"or [N, C, H, W] with C = 1 or 3")
        if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"image array has dtype {a.dtype}; use uint8 (0..255) or float ([-1, 1])")
        self.array = a if max_items is None else a[:int(max_items)]
        self.num_items = len(self.array)
        if self.num_items == 0:
            raise ValueError("the image array is empty")

    def iter_batches(self, batch_size):
        for start in range(0, self.num_items, batch_size):
            chunk = np.array(self.array[start:start + batch_size], copy=True)  # memmaps are read-only
            t = torch.from_numpy(chunk)
            yield t if t.dtype == torch.uint8 else quantize(t)


def _load_array_file(path):
    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r")
    with np.load(path) as data:
        keys = list(data.keys())
        for k in ("images", "x", "arr_0"):
            if k in keys:
                return data[k]
        if len(keys) == 1:
            return data[keys[0]]
    raise ValueError(f"{path} holds arrays {keys}; name the images array 'images' (or save one array)")


def open_images(obj, num=None, seed=0, device=None):
    """An image source for a generator, folder, .npy/.npz array file or numpy array."""
    if isinstance(obj, (GeneratorSource, FolderSource, ArraySource)):
        return obj
    if isinstance(obj, np.ndarray):
        return ArraySource(obj, max_items=num)
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if os.path.isdir(path):
            return FolderSource(path, max_items=num)
        if path.endswith((".npy", ".npz")) and os.path.isfile(path):
            return ArraySource(path, max_items=num)
    if num is None:
        raise ValueError("say how many images to generate (num)")
    return GeneratorSource(obj, num=num, seed=seed, device=device)


# ----------------------------------------------------------------------------
# Features and statistics.

def compute_feature_stats(source, detector, batch_size=64, capture_all=False, progress=False):
    """Run every image of `source` through `detector`; returns a FeatureStats."""
    stats = FeatureStats(capture_all=capture_all)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=source.num_items, unit="img", leave=False, dynamic_ncols=True)
    try:
        for images in source.iter_batches(int(batch_size)):
            stats.append(detector(images).cpu())
            if bar is not None:
                bar.update(images.shape[0])
    finally:
        if bar is not None:
            bar.close()
    return stats


def load_ref_stats(src):
    """Reference statistics from a `.npz` path, URL or pretrained name ('fid-ref' role).

    Returns a dict with float64 `mu` [D] and `sigma` [D, D], plus `detector` when the file
    records it (files written by `save_ref_stats`; EDM's own files do not).
    """
    target = os.fspath(src)
    sha256 = None
    if not os.path.exists(target) and "://" not in target:
        from .. import pretrained
        entry = pretrained.lookup(target)
        if entry is None or not entry.get("url"):
            raise FileNotFoundError(f"no such reference statistics file: {target}")
        target, sha256 = pretrained.resolve(target), entry.get("sha256")
    with dl.open_url(target, sha256=sha256) as f:
        payload = f.read()
    try:
        data = np.load(io.BytesIO(payload), allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{target} is not a .npz statistics file ({err})") from err
    if not hasattr(data, "files") or "mu" not in data.files or "sigma" not in data.files:
        raise ValueError(f"{target} has no 'mu' and 'sigma' arrays; reference statistics use "
                         f"EDM's .npz layout")
    out = dict(mu=data["mu"].astype(np.float64), sigma=data["sigma"].astype(np.float64))
    d = out["mu"].shape
    if out["mu"].ndim != 1 or out["sigma"].shape != d * 2:
        raise ValueError(f"{target}: mu {out['mu'].shape} and sigma {out['sigma'].shape} do not "
                         f"form a [D] mean and [D, D] covariance")
    if "detector" in data.files:
        out["detector"] = str(data["detector"])
    if "num" in data.files:
        out["num"] = int(data["num"])
    return out


def save_ref_stats(path, stats, detector_name=None):
    """Write `stats` (FeatureStats or a dict with mu/sigma) in EDM's .npz layout, atomically.

    Besides `mu` and `sigma` the file records `detector` and `num`, which EDM's loader ignores.
    """
    from ..pickles import atomic_write_bytes
    if isinstance(stats, FeatureStats):
        arrays = dict(mu=stats.mean, sigma=stats.cov, num=np.int64(stats.num_items))
    else:
        arrays = dict(mu=np.asarray(stats["mu"]), sigma=np.asarray(stats["sigma"]))
    if detector_name is not None:
        arrays["detector"] = np.str_(detector_name)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(os.fspath(path), buf.getvalue())
    return os.fspath(path)


def is_stats_source(ref):
    """True when `ref` names mean/covariance statistics (an .npz with mu/sigma, a URL or a table
    name) rather than reference images (a folder or an image array)."""
    if not isinstance(ref, (str, os.PathLike)):
        return False
    ref = os.fspath(ref)
    if os.path.isdir(ref):
        return False
    if ref.endswith(".npz") and os.path.isfile(ref):
        with np.load(ref) as data:
            return "mu" in data.files and "sigma" in data.files
    return not os.path.exists(ref)  # a URL or pretrained name: only statistics are hosted


def check_reference(metrics, ref):
    """Whether `ref` is statistics (see is_stats_source); ValueError when `metrics` include KID
    or precision/recall, which need the reference features themselves."""
    is_stats = ref is not None and is_stats_source(ref)
    if is_stats and any(m in ("kid", "pr") for m in metrics):
        raise ValueError("KID and precision/recall need reference images (a folder or "
                         "array), not a mean/covariance file")
    return is_stats


def compute_metrics(gen=None, ref=None, metrics=("fid",), num=50000, ref_num=None,
                    detector="inception-2015-12-05", batch_size=64, seed=0, device=None,
                    kid_subsets=100, kid_subset_size=1000, pr_k=3, progress=False,
                    save_ref_stats_path=None):
    """FID / KID / precision-recall of `gen` against `ref`; returns a dict of results.

    gen: a generator (z_dim/c_dim, G(z, c) -> [-1, 1]), network pickle path, image folder,
        .npy/.npz image array or numpy array. For folders and arrays `num` caps the count.
    ref: a statistics .npz (mu/sigma; FID only), a pretrained 'fid-ref' name or URL, an
        image folder or array (all of it unless `ref_num`), or the FeatureStats of reference
        images computed earlier with the same detector (capture_all=True for KID and
        precision/recall), so repeated evaluations run the detector over them once. None
        computes no metric.
    save_ref_stats_path: also write the statistics of `gen` there (EDM .npz layout).
    """
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    t0 = time.time()
    device = auto_device(device)
    need_all = any(m in ("kid", "pr") for m in metrics) and ref is not None
    ref_stats = ref_feats = None
    result = {}
    # A bad reference file should fail before a detector download is attempted.
    ref_is_stats = check_reference(metrics, ref)
    if ref_is_stats:
        ref_stats = load_ref_stats(ref)
        result["num_ref"] = ref_stats.get("num")

    gen_src = open_images(gen, num=num, seed=seed, device=device)
    det = get_detector(detector, device=device)
    det_name = os.fspath(detector) if isinstance(detector, (str, os.PathLike)) else det.name
    if ref_is_stats and ref_stats.get("detector") not in (None, det_name):
        warnings.warn(f"reference statistics were made with detector "
                      f"{ref_stats['detector']!r}, not {det_name!r}", stacklevel=2)
    if ref is not None and not ref_is_stats:
        if isinstance(ref, FeatureStats):
            fs = ref
        else:
            src = open_images(ref, num=ref_num, device=device)
            fs = compute_feature_stats(src, det, batch_size, capture_all=need_all, progress=progress)
        ref_stats = dict(mu=fs.mean, sigma=fs.cov)
        ref_feats = fs.get_all() if need_all else None
        result["num_ref"] = fs.num_items

    fs = compute_feature_stats(gen_src, det, batch_size, capture_all=need_all, progress=progress)
    result["num"] = fs.num_items
    if save_ref_stats_path is not None:
        save_ref_stats(save_ref_stats_path, fs, detector_name=det_name)
    if ref_stats is not None and ref_stats["mu"].shape[0] != fs.feature_dim:
        raise ValueError(f"reference statistics have {ref_stats['mu'].shape[0]} features but "
                         f"detector {det_name!r} gives {fs.feature_dim}; use the detector "
                         f"they were made with")
    if ref is not None:
        if "fid" in metrics:
            result["fid"] = frechet_distance(fs.mean, fs.cov, ref_stats["mu"], ref_stats["sigma"])
        if "kid" in metrics:
            result["kid"], result["kid_std"] = kernel_inception_distance(
                fs.get_all(), ref_feats, kid_subsets, kid_subset_size, seed=seed)
        if "pr" in metrics:
            result["precision"], result["recall"] = precision_recall(ref_feats, fs.get_all(), k=pr_k)
    result.update(detector=det_name, feature_dim=fs.feature_dim, seed=int(seed),
                  seconds=round(time.time() - t0, 3))
    return result
