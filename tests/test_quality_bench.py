"""benchmarks/quality.py --quick runs end to end, and its figures agree with the product's own
metric code (gan_refine.metrics.compute_metrics against the shipped reference statistics), which
computes them along a different path."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_quality_benchmark(tmp_path):
    out = tmp_path / "q"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "quality.py"), "--quick",
                           "--pairs", "cond", "--jobs", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=580, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "q.json").read_text())["results"]
    floor, cond = res["floor"], res["cond"]
    # The near-duplicate threshold is the held-out images' own 5th percentile.
    assert abs(floor["dup_rate"] - 0.05) < 0.01
    assert floor["copying_ct"] == 0.0   # the held-out images against themselves: U is exactly n*n/2
    start = cond["start"]
    for key in ("precision", "recall", "pixel_precision", "pixel_recall", "label_accuracy"):
        assert 0 <= start[key]["mean"] <= 1
    curve = cond["curves"]["refined"]
    assert set(curve) == {"3", "6"} and "precision" in curve["6"] and "fid" in curve["3"]

    # The starting generator's FID on 300 images, by the product's metric code.
    import gan_refine
    from gan_refine.adapters import as_generator
    from gan_refine.metrics.compute import compute_metrics
    from gan_refine.zoo.digits_data import load_digits_split
    G = as_generator(gan_refine.load_network_pkl("digits-cond")).module
    x_train = load_digits_split(16)[0].numpy()
    got = compute_metrics(gen=G, ref=x_train, metrics=("fid",), num=300, detector="digits", device="cpu")
    np.testing.assert_allclose(start["fid"]["mean"], got["fid"], rtol=1e-3)   # batch sizes differ: float32 rounding
    assert "Share of the start-to-teacher FID gap closed" in (tmp_path / "q.md").read_text()
