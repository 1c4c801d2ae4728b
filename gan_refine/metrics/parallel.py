"""Metrics of a generator computed by several processes at once.

Each rank generates a share of the evaluation batches (the same batches, seeds and per-batch
RNG seeding as one process uses), runs the detector over them, and rank 0 gathers the
features in batch order, so the figures equal a single process's to float rounding.
"""

import numpy as np

from . import compute
from .compute import GeneratorSource, compute_metrics, is_stats_source, open_images
from .detectors import get_detector
from .stats import FeatureStats

__all__ = ["evaluate_generator"]

BATCH = 64  # compute_metrics' batch size: the same boundaries give the same images


def evaluate_generator(G, plan, ref, device, dist, seed=0):
    """Evaluate G as `plan` (metrics, ref, detector, num) says; returns (results, ref) where
    ref is the reference with its image features cached for the next call. Collective: every
    rank calls it; results are complete on rank 0 only (None elsewhere)."""
    if ref is None:
        ref = plan["ref"]
        if not is_stats_source(ref):  # reference images: run the detector over them once
            if dist.is_main:
                ref = compute.compute_feature_stats(open_images(ref), get_detector(plan["detector"], device=device),
                                            capture_all=True)
    seeds = plan.get("seeds") or list(range(seed, seed + int(plan["num"])))
    if not dist.enabled:
        res = compute_metrics(gen=G, ref=ref, metrics=plan["metrics"], num=len(seeds), seeds=seeds,
                              detector=plan["detector"], device=device, seed=seed, batch_size=BATCH)
        return res, ref
    with dist.main_first("loading the metrics detector"):  # only rank 0 downloads it
        detector = get_detector(plan["detector"], device=device)
    num = len(seeds)
    mine = []
    for start in range(dist.rank * BATCH, num, dist.world_size * BATCH):
        src = GeneratorSource(G, seeds=seeds[start:start + BATCH], device=device)
        for images in src.iter_batches(BATCH):
            mine.append((start, detector(images).cpu().numpy().astype(np.float32)))
    shares = dist.all_gather_object(mine, what="gathering evaluation features")
    if not dist.is_main:
        return None, ref
    gen_stats = FeatureStats(capture_all=True)
    for _, feats in sorted((item for share in shares for item in share), key=lambda t: t[0]):
        gen_stats.append(feats)
    res = compute_metrics(gen=gen_stats, ref=ref, metrics=plan["metrics"], num=num,
                          detector=plan["detector"], device=device, seed=seed, batch_size=BATCH)
    return res, ref
