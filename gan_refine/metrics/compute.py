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
           "compute_feature_stats", "compute_feature_stats_multi", "reference_features",
           "load_ref_stats", "save_ref_stats", "compute_metrics", "is_stats_source",
           "check_reference", "METRICS", "IMAGE_EXTENSIONS"]

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
    """Images from a generator `G(z, c) -> [-1, 1]` over seeds seed .. seed + num - 1, or over
    the list `seeds` (gan_refine.seeds.parse_seeds reads '0-49999' and '0,5,10-20')."""

    def __init__(self, G, num=None, seed=0, device=None, seeds=None):
        self.G = _as_generator(G)
        if seeds is None:
            seeds = range(int(seed), int(seed) + int(num))
        self.seeds = [int(s) for s in seeds]
        self.num_items = len(self.seeds)
        self.seed = self.seeds[0] if self.seeds else int(seed)
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
                seeds = self.seeds[start:start + batch_size]
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


def open_images(obj, num=None, seed=0, device=None, seeds=None):
    """An image source for a generator (seeds seed .. seed+num-1, or the list `seeds`), folder,
    .npy/.npz array file or numpy array."""
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
    if seeds is not None:
        return GeneratorSource(obj, device=device, seeds=seeds)
    if num is None:
        raise ValueError("say how many images to generate (num)")
    return GeneratorSource(obj, num=num, seed=seed, device=device)


# ----------------------------------------------------------------------------
# Features and statistics.

def compute_feature_stats(source, detector, batch_size=64, capture_all=False, progress=False):
    """Run every image of `source` through `detector`; returns a FeatureStats."""
    return compute_feature_stats_multi(source, {"features": (detector, capture_all)}, batch_size,
                                       progress)["features"]


def compute_feature_stats_multi(source, detectors, batch_size=64, progress=False):
    """One pass over `source` feeding every batch to several detectors.

    detectors: {key: (Detector, capture_all)}. Returns {key: FeatureStats}. Generating the
    images once matters when FID and precision/recall use different detectors.
    """
    stats = {k: FeatureStats(capture_all=cap) for k, (_, cap) in detectors.items()}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=source.num_items, unit="img", leave=False, dynamic_ncols=True)
    try:
        for images in source.iter_batches(int(batch_size)):
            for k, (det, _) in detectors.items():
                stats[k].append(det(images).cpu())
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


def _spec_name(spec):
    """The name results report for a detector given as name/path/URL, Detector or module."""
    if isinstance(spec, (str, os.PathLike)):
        return os.fspath(spec)
    return getattr(spec, "name", None) or type(spec).__name__


def _feature_spaces(metrics, ref, detector, pr_detector, save_stats):
    """{detector name: [spec, capture_all]} of the detectors this evaluation needs, and the
    names serving FID/KID (`main`, None when unused) and precision/recall (`pr`)."""
    spaces = {}

    def want(spec, capture):
        name = _spec_name(spec)
        if name in spaces:
            spaces[name][1] = spaces[name][1] or capture
        else:
            spaces[name] = [spec, capture]
        return name
    scored = ref is not None
    main = None
    if not (scored and metrics == ("pr",) and pr_detector is not None and not save_stats):
        main = want(detector, scored and "kid" in metrics)
    pr = None
    if scored and "pr" in metrics:
        pr = want(detector if pr_detector is None else pr_detector, True)
    return spaces, main, pr


def _is_features(obj):
    return isinstance(obj, FeatureStats) or (
        isinstance(obj, dict) and bool(obj) and all(isinstance(v, FeatureStats) for v in obj.values()))


def _stats_per_space(obj, dets, what, num=None, device=None, batch_size=64, progress=False):
    """{detector name: FeatureStats} for every detector in `dets` ({name: (Detector,
    capture_all)}): from images in one pass, or from features given as one FeatureStats (a
    single detector only) or a {detector name: FeatureStats} dict."""
    if isinstance(obj, FeatureStats):
        if len(dets) != 1:
            raise ValueError(f"{what} is given as the features of one detector, but this evaluation "
                             f"uses {', '.join(dets)}: pass {{detector name: FeatureStats}} "
                             f"(see reference_features)")
        return {next(iter(dets)): obj}
    if _is_features(obj):
        missing = [n for n in dets if n not in obj]
        if missing:
            raise ValueError(f"{what} features are given for {', '.join(obj)} but not for "
                             f"{', '.join(missing)}")
        return {n: obj[n] for n in dets}
    src = open_images(obj, num=num, device=device)
    return compute_feature_stats_multi(src, dets, batch_size, progress)


def reference_features(ref, metrics=("fid",), detector="inception-2015-12-05", pr_detector=None,
                       ref_num=None, device=None, batch_size=64, progress=False):
    """Reference features to reuse across evaluations: `ref` itself when it is statistics
    (.npz, name or URL), else {detector name: FeatureStats} of its images for every detector
    the metrics need, ready to pass back to compute_metrics as `ref`."""
    metrics = tuple(dict.fromkeys(metrics))
    if check_reference(metrics, ref):
        return ref
    device = auto_device(device)
    spaces, _, _ = _feature_spaces(metrics, ref, detector, pr_detector, False)
    dets = {n: (get_detector(spec, device=device), cap) for n, (spec, cap) in spaces.items()}
    return _stats_per_space(ref, dets, "ref", num=ref_num, device=device, batch_size=batch_size,
                            progress=progress)


def compute_metrics(gen=None, ref=None, metrics=("fid",), num=50000, ref_num=None,
                    detector="inception-2015-12-05", batch_size=64, seed=0, device=None,
                    kid_subsets=100, kid_subset_size=1000, pr_k=3, progress=False,
                    save_ref_stats_path=None, pr_detector=None, seeds=None):
    """FID / KID / precision-recall of `gen` against `ref`; returns a dict of results.

    gen: a generator (z_dim/c_dim, G(z, c) -> [-1, 1]), network pickle path, image folder,
        .npy/.npz image array or numpy array. For folders and arrays `num` caps the count.
        Or the FeatureStats of generated images (capture_all=True for KID and precision/recall).
    ref: a statistics .npz (mu/sigma; FID only), a pretrained 'fid-ref' name or URL, an
        image folder or array (all of it unless `ref_num`), or the FeatureStats of reference
        images computed earlier with the same detector (capture_all=True for KID and
        precision/recall), so repeated evaluations run the detector over them once. None
        computes no metric.
    detector: feature network of FID and KID (and of precision/recall unless `pr_detector`).
    pr_detector: feature network of precision/recall, e.g. 'vgg16' as in StyleGAN's protocol
        (a registered name, TorchScript file or URL); None uses `detector`. With two
        detectors, `gen` and `ref` given as features are {detector name: FeatureStats} dicts
        (see reference_features); generated images are made once and fed to both.
    save_ref_stats_path: also write the statistics of `gen` there (EDM .npz layout).

    The result names the detector of every figure: `detectors` maps fid, kid, kid_std,
    precision and recall (those computed) to a detector name.
    """
    metrics = tuple(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        from .protocol import ALIASES
        hint = ("; expand aliases such as fid50k_full with gan_refine.metrics.resolve_metric_names"
                if any(m in ALIASES for m in unknown) else "")
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}{hint}")
    t0 = time.time()
    device = auto_device(device)
    ref_stats = None
    result = {}
    # A bad reference file should fail before a detector download is attempted.
    ref_is_stats = check_reference(metrics, ref)
    if ref_is_stats:
        ref_stats = load_ref_stats(ref)
        result["num_ref"] = ref_stats.get("num")

    spaces, main, pr = _feature_spaces(metrics, ref, detector, pr_detector,
                                       save_ref_stats_path is not None)
    # Features computed elsewhere (several processes, say) come in as a FeatureStats.
    gen_src = None if _is_features(gen) else open_images(gen, num=num, seed=seed, device=device, seeds=seeds)
    dets = {n: (get_detector(spec, device=device), cap) for n, (spec, cap) in spaces.items()}
    if ref_is_stats and ref_stats.get("detector") not in (None, main):
        warnings.warn(f"reference statistics were made with detector "
                      f"{ref_stats['detector']!r}, not {main!r}", stacklevel=2)
    ref_fs = {}
    if ref is not None and not ref_is_stats:
        ref_fs = _stats_per_space(ref, dets, "ref", num=ref_num, device=device, batch_size=batch_size,
                                  progress=progress)
        result["num_ref"] = next(iter(ref_fs.values())).num_items
        if main is not None:
            ref_stats = dict(mu=ref_fs[main].mean, sigma=ref_fs[main].cov)

    gen_fs = (_stats_per_space(gen, dets, "gen") if gen_src is None
              else compute_feature_stats_multi(gen_src, dets, batch_size, progress))
    first = gen_fs[main if main is not None else pr]
    result["num"] = first.num_items
    if save_ref_stats_path is not None:
        save_ref_stats(save_ref_stats_path, gen_fs[main], detector_name=main)
    if ref_stats is not None and ref_stats["mu"].shape[0] != gen_fs[main].feature_dim:
        raise ValueError(f"reference statistics have {ref_stats['mu'].shape[0]} features but "
                         f"detector {main!r} gives {gen_fs[main].feature_dim}; use the detector "
                         f"they were made with")
    used = {}
    if ref is not None:
        fs = gen_fs.get(main)
        if "fid" in metrics:
            result["fid"] = frechet_distance(fs.mean, fs.cov, ref_stats["mu"], ref_stats["sigma"])
            used["fid"] = main
        if "kid" in metrics:
            result["kid"], result["kid_std"] = kernel_inception_distance(
                fs.get_all(), ref_fs[main].get_all(), kid_subsets, kid_subset_size, seed=seed)
            used.update(kid=main, kid_std=main)
        if "pr" in metrics:
            result["precision"], result["recall"] = precision_recall(
                ref_fs[pr].get_all(), gen_fs[pr].get_all(), k=pr_k)
            used.update(precision=pr, recall=pr)
    head = main if main is not None else pr
    result.update(detector=head, feature_dim=gen_fs[head].feature_dim)
    if pr is not None and pr != head:
        result.update(pr_detector=pr, pr_feature_dim=gen_fs[pr].feature_dim)
    result.update(detectors=used, seed=int(seed), seconds=round(time.time() - t0, 3))
    return result
