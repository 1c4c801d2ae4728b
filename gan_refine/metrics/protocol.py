"""Metric names StyleGAN users know, and the defaults every command picks for a reference.

    resolve_metric_names("fid50k_full,kid50k_full")   # (('fid', 'kid'), 50000, {})
    default_detector("fid-ref-digits-16x16")           # 'digits'
    default_num("fid-ref-digits-16x16")                # 2000

`gan-refine-metrics` and `gan-refine --metrics` both call these, so for the same reference they
use the same detector and image count unless told otherwise.
"""

import os

from .compute import METRICS
from .detectors import INCEPTION, VGG16

__all__ = ["ALIASES", "resolve_metric_names", "named_results", "metric_detectors",
           "default_detector", "default_num", "STANDARD_NUM", "VGG16"]

# Generated images of the published protocols (seeds 0-49999).
STANDARD_NUM = 50000

# Name -> (metric, generated images, further compute_metrics keywords). '_full' means the whole
# reference set; the older names without it cap the reference at 50,000 images, as StyleGAN's
# legacy metrics did. ref_num=None is spelled out so that mixing the two kinds is an error
# rather than a silent choice.
ALIASES = {
    "fid50k_full": ("fid", STANDARD_NUM, {"ref_num": None}),
    "kid50k_full": ("kid", STANDARD_NUM, {"ref_num": None}),
    "pr50k3_full": ("pr", STANDARD_NUM, {"ref_num": None, "pr_k": 3}),
    "fid50k": ("fid", STANDARD_NUM, {"ref_num": 50000}),
    "kid50k": ("kid", STANDARD_NUM, {"ref_num": 50000}),
    "pr50k3": ("pr", STANDARD_NUM, {"ref_num": 50000, "pr_k": 3}),
}

# Figures each short metric produces, in the order they are reported.
_FIGURES = {"fid": ("fid",), "kid": ("kid", "kid_std"), "pr": ("precision", "recall")}


def _split(names):
    items = names.split(",") if isinstance(names, str) else list(names)
    return [str(m).strip().lower() for m in items if str(m).strip()]


def resolve_metric_names(names):
    """Metric names and aliases -> (metrics, num, kwargs).

    names: a list of names or one comma-separated string; short names (fid, kid, pr) and
        ALIASES (fid50k_full, kid50k_full, pr50k3_full, fid50k, kid50k, pr50k3) mix freely.
    Returns the short metrics in first-mention order without repeats, the number of generated
    images the aliases fix (None when only short names were given), and the compute_metrics
    keywords they fix (pr_k, ref_num). ValueError, one line, for unknown names or aliases that
    disagree (fid50k with fid50k_full: capped against full reference).
    """
    requested = _split(names)
    unknown = [m for m in requested if m not in METRICS and m not in ALIASES]
    if unknown or not requested:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(METRICS)} or {', '.join(ALIASES)} (comma-separated)")
    metrics, num, kwargs, source = [], None, {}, {}
    for name in requested:
        metric, n, extra = ALIASES.get(name, (name, None, {}))
        if metric not in metrics:
            metrics.append(metric)
        if n is not None:
            num = n  # every alias uses the same count
        for key, value in extra.items():
            if key in kwargs and kwargs[key] != value:
                raise ValueError(f"{source[key]} and {name} disagree on {key} ({kwargs[key]} vs "
                                 f"{value}); use aliases of one kind (all *_full, or none)")
            kwargs[key], source[key] = value, name
    return tuple(metrics), num, kwargs


def named_results(result, names):
    """Figures of a compute_metrics result under the names asked for, as StyleGAN reports them:
    {'fid50k_full': ..., 'pr50k3_full_precision': ..., 'pr50k3_full_recall': ...}; short names
    give {'fid': ..., 'kid': ..., 'kid_std': ..., 'precision': ..., 'recall': ...}."""
    out = {}
    for name in dict.fromkeys(_split(names)):
        metric = ALIASES[name][0] if name in ALIASES else name
        for fig in _FIGURES.get(metric, ()):
            if fig not in result:
                continue
            if name == metric:
                key = fig
            elif metric == "pr":
                key = f"{name}_{fig}"
            else:
                key = name if fig == metric else f"{name}_std"
            out[key] = result[fig]
    return out


def metric_detectors(metrics, detector, pr_detector=None):
    """{metric: detector name or object} for the metrics asked for: FID and KID use `detector`;
    precision/recall uses `pr_detector` when given (StyleGAN uses VGG16 there), else `detector`."""
    return {m: (pr_detector if (m == "pr" and pr_detector is not None) else detector)
            for m in dict.fromkeys(metrics)}


def _table_entry(ref, ref_entry):
    if ref_entry is not None or not isinstance(ref, (str, os.PathLike)):
        return ref_entry
    from .. import pretrained
    entry = pretrained.entry_for(os.fspath(ref))
    return entry if entry is not None and entry.get("role") == "fid-ref" else None


def default_detector(ref, ref_entry=None):
    """The detector to use with reference `ref` when none is given.

    In order: the `detector` field of the reference's pretrained_urls.json entry (`ref_entry`,
    looked up from `ref` when not given: a name, URL or shipped file); the detector recorded in
    a statistics .npz that gan_refine wrote; else Inception-v3 (inception-2015-12-05), which
    EDM's and StyleGAN's own reference files are made with. An unreadable file is not an error
    here: computing the metric reports it.
    """
    entry = _table_entry(ref, ref_entry)
    if entry is not None and entry.get("detector"):
        return entry["detector"]
    if entry is None and isinstance(ref, (str, os.PathLike)):
        path = os.fspath(ref)
        if path.endswith(".npz") and os.path.isfile(path):
            from .compute import load_ref_stats
            try:
                recorded = load_ref_stats(path).get("detector")
            except (OSError, ValueError):
                recorded = None
            if recorded:
                return recorded
    return INCEPTION


def default_num(ref, ref_entry=None):
    """Generated images per evaluation when none is given: the reference entry's `eval_num`
    (2,000 for the digits reference), else the standard 50,000."""
    entry = _table_entry(ref, ref_entry)
    return int((entry or {}).get("eval_num") or STANDARD_NUM)
