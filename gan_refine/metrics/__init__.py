"""FID, KID and precision/recall for generators and image sets, with a pluggable detector.

    from gan_refine.metrics import compute_metrics
    compute_metrics(gen=G, ref="real_images/", metrics=("fid", "kid"), num=10000,
                    detector="inception-2015-12-05")

The protocol follows the StyleGAN/EDM metric code (see docs/metrics.md); the maths lives in
`stats`, detectors in `detectors`, extraction and reference files in `compute`, StyleGAN's
metric names (fid50k_full, ...) and the per-reference defaults in `protocol`, and the
`gan-refine-metrics` command in `cli`.
"""

from .compute import (METRICS, ArraySource, FolderSource, GeneratorSource, compute_feature_stats,
                      compute_feature_stats_multi, compute_metrics, load_ref_stats, open_images,
                      quantize, reference_features, save_ref_stats)
from .detectors import (INCEPTION, VGG16, Detector, ModuleDetector, auto_device, detector_names,
                        get_detector, load_detector_file, register_detector,
                        register_detector_url, unregister_detector)
from .protocol import (ALIASES, STANDARD_NUM, default_detector, default_num, metric_detectors,
                       named_results, resolve_metric_names)
from .stats import (FeatureStats, data_copying, frechet_distance, kernel_inception_distance,
                    kid_subsets, precision_recall)

__all__ = [
    "compute_metrics", "compute_feature_stats", "compute_feature_stats_multi", "reference_features",
    "load_ref_stats", "save_ref_stats", "quantize",
    "open_images", "GeneratorSource", "FolderSource", "ArraySource", "METRICS",
    "ALIASES", "STANDARD_NUM", "resolve_metric_names", "named_results", "metric_detectors",
    "default_detector", "default_num",
    "get_detector", "register_detector", "register_detector_url", "unregister_detector",
    "detector_names", "load_detector_file", "Detector", "ModuleDetector", "INCEPTION", "VGG16",
    "auto_device",
    "FeatureStats", "frechet_distance", "kernel_inception_distance", "kid_subsets",
    "precision_recall", "data_copying",
]
