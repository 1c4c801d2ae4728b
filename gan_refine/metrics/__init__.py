"""FID, KID and precision/recall for generators and image sets, with a pluggable detector.

    from gan_refine.metrics import compute_metrics
    compute_metrics(gen=G, ref="real_images/", metrics=("fid", "kid"), num=10000,
                    detector="inception-2015-12-05")

The protocol follows the StyleGAN/EDM metric code (see docs/metrics.md); the maths lives in
`stats`, detectors in `detectors`, extraction and reference files in `compute`, and the
`gan-refine-metrics` command in `cli`.
"""

from .compute import (METRICS, ArraySource, FolderSource, GeneratorSource, compute_feature_stats,
                      compute_metrics, load_ref_stats, open_images, quantize, save_ref_stats)
from .detectors import (INCEPTION, Detector, ModuleDetector, auto_device, detector_names,
                        get_detector, load_detector_file, register_detector,
                        register_detector_url, unregister_detector)
from .stats import (FeatureStats, frechet_distance, kernel_inception_distance, kid_subsets,
                    precision_recall)

__all__ = [
    "compute_metrics", "compute_feature_stats", "load_ref_stats", "save_ref_stats", "quantize",
    "open_images", "GeneratorSource", "FolderSource", "ArraySource", "METRICS",
    "get_detector", "register_detector", "register_detector_url", "unregister_detector",
    "detector_names", "load_detector_file", "Detector", "ModuleDetector", "INCEPTION",
    "auto_device",
    "FeatureStats", "frechet_distance", "kernel_inception_distance", "kid_subsets",
    "precision_recall",
]
