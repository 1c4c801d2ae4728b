"""gan_refine.metrics against closed forms, brute-force loops and a real loopback HTTP server."""

import hashlib
import http.server
import importlib.util
import io
import json
import os
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import gan_refine  # noqa: F401  (installs dnnlib / torch_utils)
from gan_refine.compat.dnnlib import util as dl
from gan_refine.metrics import (FeatureStats, compute_metrics, detectors, frechet_distance,
                                get_detector, kernel_inception_distance, kid_subsets,
                                load_ref_stats, precision_recall, quantize, data_copying,
                                register_detector_url, save_ref_stats, unregister_detector)
from gan_refine.metrics.cli import main as metrics_cli

FEAT_DIM = 2048


# ----------------------------------------------------------------------------
# Independent references (float64 numpy, written from the definitions).

def sqrtm_psd(a):
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid_closed_form(mu1, s1, mu2, s2):
    # tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2), the latter symmetric PSD: eigh suffices.
    r1 = sqrtm_psd(s1)
    inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def kid_double_loop(x, y):
    n, d = x.shape
    k = lambda a, b: (float(np.dot(a, b)) / d + 1) ** 3  # noqa: E731
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(n))
    return sxx / (n * (n - 1)) + syy / (n * (n - 1)) - 2 * sxy / (n * n)


def random_cov(rng, d, scale=1.0):
    a = rng.standard_normal([d, d])
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


# ----------------------------------------------------------------------------
# Statistics and distances.

def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    assert abs(frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1))) < 1e-10


def test_frechet_full_covariance_matches_eigendecomposition():
    rng = np.random.default_rng(1)
    d = 12
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_cov(rng, d), random_cov(rng, d, scale=2.0)
    expected = fid_closed_form(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_rank_deficient_covariances():
    # 6 samples in 10 dimensions: singular covariances, as with too few images for 2048 features.
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal([6, 10]), rng.standard_normal([6, 10]) + 0.5
    mx, sx, my, sy = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = frechet_distance(mx, sx, my, sy)
        same = frechet_distance(mx, sx, mx, sx)
    assert np.isfinite(got)
    assert got == pytest.approx(fid_closed_form(mx, sx, my, sy), rel=1e-4, abs=1e-4)
    assert abs(same) < 1e-4


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same detector"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_fid_of_samples_converges_to_closed_form():
    rng = np.random.default_rng(3)
    d = 4
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_cov(rng, d), random_cov(rng, d, scale=0.5)
    truth = fid_closed_form(mu1, s1, mu2, s2)
    errors = []
    for n in (200, 50_000):
        fs1, fs2 = FeatureStats(), FeatureStats()
        x = rng.multivariate_normal(mu1, s1, size=n)
        y = rng.multivariate_normal(mu2, s2, size=n)
        for start in range(0, n, 4096):  # batched, as during extraction
            fs1.append(x[start:start + 4096])
            fs2.append(torch.from_numpy(y[start:start + 4096]).float())
        errors.append(abs(frechet_distance(fs1.mean, fs1.cov, fs2.mean, fs2.cov) - truth))
    assert errors[1] < 0.02 * truth
    assert errors[1] < errors[0]


def test_running_mean_cov_equals_numpy():
    rng = np.random.default_rng(4)
    # A large common offset is where sum(xx^T)/n - mu mu^T loses digits.
    x = rng.standard_normal([1000, 7]) * rng.uniform(0.5, 3, 7) + 1e4
    fs = FeatureStats(capture_all=True)
    for start, size in [(0, 1), (1, 300), (301, 2), (303, 697)]:
        fs.append(x[start:start + size])
    assert fs.num_items == 1000
    np.testing.assert_allclose(fs.mean, np.mean(x, axis=0), rtol=1e-13)
    np.testing.assert_allclose(fs.cov, np.cov(x, rowvar=False), rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(fs.get_all(), x.astype(np.float32))
    capped = FeatureStats(max_items=250)
    for start in range(0, 1000, 100):
        capped.append(x[start:start + 100])
    assert capped.num_items == 250 and capped.is_full()
    np.testing.assert_allclose(capped.cov, np.cov(x[:250], rowvar=False), rtol=1e-8, atol=1e-10)


def test_kid_matches_double_loop():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal([5, 3]), rng.standard_normal([5, 3]) * 1.5 + 0.3
    expected = kid_double_loop(x, y)
    # One subset of all 5 rows is a permutation, and the estimator is permutation invariant.
    vals = kid_subsets(x, y, num_subsets=3, max_subset_size=10, seed=0)
    np.testing.assert_allclose(vals, expected, rtol=1e-12)
    assert kernel_inception_distance(x, y, 3, 10)[0] == pytest.approx(expected, rel=1e-12)


def test_kid_unbiased_for_identical_distributions():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal([1000, 16]), rng.standard_normal([1000, 16])
    mean, std = kernel_inception_distance(x, y, num_subsets=30, max_subset_size=150, seed=1)
    assert std > 0 and abs(mean) < 2 * std
    shifted, _ = kernel_inception_distance(x, y + 0.5, num_subsets=30, max_subset_size=150, seed=1)
    assert shifted > 10 * std


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(7)
    real, gen = rng.standard_normal([20, 3]), rng.standard_normal([15, 3]) * 1.3 + 0.4
    k = 3

    def radii(a):
        return np.array([np.sort([np.linalg.norm(p - q) for q in a])[k] for p in a])

    def covered(manifold, r, probes):
        return np.mean([any(np.linalg.norm(p - q) <= rq for q, rq in zip(manifold, r)) for p in probes])

    p, r = precision_recall(real, gen, k=k, row_batch=4)
    assert p == pytest.approx(covered(real, radii(real), gen))
    assert r == pytest.approx(covered(gen, radii(gen), real))
    assert precision_recall(real, real, k=k) == (1.0, 1.0)


def test_data_copying_z_matches_pair_count():
    # One cell: C_T is the z-score of the Mann-Whitney U, counted here pair by pair in float64.
    rng = np.random.default_rng(11)
    train = rng.standard_normal([40, 2])
    held_out, gen = rng.standard_normal([30, 2]), rng.standard_normal([50, 2]) * 0.8
    dist = lambda p: np.array([min(np.linalg.norm(x - t) for t in train) for x in p])  # noqa: E731
    a, b = dist(held_out), dist(gen)
    u = sum((bj > ai) + 0.5 * (bj == ai) for ai in a for bj in b)
    n, m = len(a), len(b)
    z = (u - n * m / 2) / np.sqrt(n * m * (n + m + 1) / 12)
    ct, used = data_copying(train, held_out, gen, cells=1, min_per_cell=1)
    assert ct == pytest.approx(z, rel=1e-9) and used == 1.0
    # The held-out set scored against itself: U is exactly n*n/2.
    assert data_copying(train, held_out, held_out, cells=1, min_per_cell=1)[0] == 0.0


def test_data_copying_weights_cells_by_held_out_share():
    # Three far-apart clusters, so k-means' three cells are the clusters. The held-out images
    # fall 10 / 30 / 20 into them and the generated ones 50 / 40 / 5: the third cell holds fewer
    # than min_per_cell generated vectors and is left out; the other two are averaged with
    # weights 10 and 30.
    rng = np.random.default_rng(13)
    centres = np.array([[-40.0, 0.0], [40.0, 0.0], [0.0, 60.0]])

    def around(i, n, scale=1.0):
        return centres[i] + scale * rng.standard_normal([n, 2])

    train = np.concatenate([around(i, 40) for i in range(3)])
    parts_h = [around(0, 10), around(1, 30), around(2, 20)]
    parts_g = [around(0, 50, 0.7), around(1, 40, 1.3), around(2, 5)]

    def z(a_pts, b_pts):
        dist = lambda p: np.array([min(np.linalg.norm(x - t) for t in train) for x in p])  # noqa: E731
        a, b = dist(a_pts), dist(b_pts)
        u = sum((bj > ai) + 0.5 * (bj == ai) for ai in a for bj in b)
        return (u - len(a) * len(b) / 2) / np.sqrt(len(a) * len(b) * (len(a) + len(b) + 1) / 12)

    expected = (10 * z(parts_h[0], parts_g[0]) + 30 * z(parts_h[1], parts_g[1])) / 40
    ct, used = data_copying(train, np.concatenate(parts_h), np.concatenate(parts_g), cells=3, min_per_cell=20)
    assert ct == pytest.approx(expected, rel=1e-9)
    assert used == pytest.approx(40 / 60)


def test_data_copying_sign_on_known_samplers():
    # A 5-component Gaussian mixture: a sampler that returns training points with a little noise
    # copies (C_T well below 0), fresh draws from the same law do not (|C_T| small), and fresh
    # draws with extra noise lie further from the training set than real data (C_T > 0).
    rng = np.random.default_rng(12)
    means = rng.standard_normal([5, 8]) * 4

    def draw(n):
        return means[rng.integers(0, 5, n)] + rng.standard_normal([n, 8])

    train, held_out = draw(1000), draw(300)
    copies = train[rng.integers(0, len(train), 2000)] + 0.05 * rng.standard_normal([2000, 8])
    fresh = [data_copying(train, held_out, draw(2000), cells=5)[0] for _ in range(3)]
    assert data_copying(train, held_out, copies, cells=5)[0] < -10
    assert max(abs(f) for f in fresh) < 3.5
    assert data_copying(train, held_out, draw(2000) + rng.standard_normal([2000, 8]), cells=5)[0] > 4
    # A sampler that never visits some cells: those cells are left out of C_T.
    one_mode = means[0] + rng.standard_normal([500, 8])
    _, used = data_copying(train, held_out, one_mode, cells=5)
    assert 0 < used < 0.5
    with pytest.raises(ValueError, match="feature sizes differ"):
        data_copying(train, held_out[:, :3], copies)


# ----------------------------------------------------------------------------
# Quantisation and reference files.

def test_quantize_boundaries():
    vals = [-1.0, 1.0, 0.0, -2.0, 2.0, -1.0 + 1 / 127.5, 1.0 - 1 / 255, 0.5, -0.5, 1e9, -1e9]
    got = quantize(torch.tensor(vals).reshape(1, 1, 1, -1)).flatten().tolist()
    expected = np.floor(np.clip(np.array(vals, dtype=np.float64) * 127.5 + 128, 0, 255)).astype(int)
    assert got == expected.tolist()
    assert got[:5] == [0, 255, 128, 0, 255]
    assert quantize(torch.tensor([float("nan")])).item() == 128


def test_ref_stats_npz_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    x = rng.standard_normal([50, 5])
    fs = FeatureStats()
    fs.append(x)
    path = save_ref_stats(tmp_path / "ref.npz", fs, detector_name="toy")
    with np.load(path) as raw:
        np.testing.assert_allclose(raw["mu"], x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(raw["sigma"], np.cov(x, rowvar=False), rtol=1e-10)
    back = load_ref_stats(path)
    assert back["detector"] == "toy" and back["num"] == 50
    np.testing.assert_array_equal(back["mu"], fs.mean)
    # An EDM file holds nothing but mu and sigma.
    np.savez(tmp_path / "edm.npz", mu=np.ones(3, np.float32), sigma=np.eye(3))
    edm = load_ref_stats(tmp_path / "edm.npz")
    assert edm["mu"].dtype == np.float64 and "detector" not in edm
    np.savez(tmp_path / "bad.npz", mean=np.ones(3))
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        load_ref_stats(tmp_path / "bad.npz")


# ----------------------------------------------------------------------------
# A tiny TorchScript detector: per-channel means and mean squares of the image in [0, 1],
# times a fixed matrix (6 x 2048 like Inception's pool features, or 6 x 6 for the CLI tests,
# where full-rank covariances from a dozen images keep the closed form well conditioned).

PROJ = np.random.default_rng(9).standard_normal([6, FEAT_DIM]).astype(np.float32)
PROJ_SMALL = np.random.default_rng(13).standard_normal([6, 6]).astype(np.float32)


class _TinyDetector(torch.nn.Module):
    def __init__(self, proj):
        super().__init__()
        self.register_buffer("proj", proj)

    def forward(self, x, return_features: bool = False):
        u = x.to(torch.float32) / 255.0
        return torch.cat([u.mean(dim=[2, 3]), (u * u).mean(dim=[2, 3])], dim=1) @ self.proj


def tiny_detector_bytes(proj=PROJ):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        scripted = torch.jit.script(_TinyDetector(torch.from_numpy(proj)))
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
    return buf.getvalue()


def reference_features(images_nchw_uint8, proj=PROJ):
    u = images_nchw_uint8.astype(np.float64) / 255.0
    if u.shape[1] == 1:
        u = np.repeat(u, 3, axis=1)
    return np.concatenate([u.mean(axis=(2, 3)), (u * u).mean(axis=(2, 3))], axis=1) @ proj.astype(np.float64)


DETECTOR_FILE = tiny_detector_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/tiny.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(DETECTOR_FILE)))
            self.end_headers()
            self.wfile.write(DETECTOR_FILE)
        elif self.path == "/cut.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(DETECTOR_FILE) + 5000))
            self.end_headers()
            self.wfile.write(DETECTOR_FILE[: len(DETECTOR_FILE) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture(scope="module")
def server(serve_http):
    return serve_http(_Handler)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "dnnlib-cache"
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(folder))
    yield folder
    detectors._LOADED.clear()


def cached_files(folder):
    """Downloaded files in the cache (not the record of files whose sha256 already passed)."""
    record = getattr(dl, "VERIFIED_CACHE_NAME", None)
    return [os.path.join(r, n) for r, _, names in os.walk(folder) for n in names if n != record]


def test_detector_downloaded_once_and_checked(server, cache):
    sha = hashlib.sha256(DETECTOR_FILE).hexdigest()
    register_detector_url("test-tiny", server + "/tiny.pt", sha256=sha, overwrite=True)
    try:
        det = get_detector("test-tiny", device="cpu")
        assert det.feature_dim == FEAT_DIM
        imgs = np.random.default_rng(10).integers(0, 256, [4, 3, 5, 5], dtype=np.uint8)
        np.testing.assert_allclose(det(torch.from_numpy(imgs)).numpy(), reference_features(imgs),
                                   rtol=1e-4, atol=1e-4)
        assert len(cached_files(cache)) == 1
        assert get_detector("test-tiny", device="cpu") is det
    finally:
        unregister_detector("test-tiny")


def test_standard_detector_name_uses_table_url(server, cache, monkeypatch):
    sha = hashlib.sha256(DETECTOR_FILE).hexdigest()
    monkeypatch.setattr(detectors, "_pretrained_entry",
                        lambda name: dict(url=server + "/tiny.pt", sha256=sha, role="detector"))
    det = get_detector("inception-2015-12-05", device="cpu")
    grey = np.random.default_rng(11).integers(0, 256, [3, 1, 6, 6], dtype=np.uint8)
    np.testing.assert_allclose(det(grey).numpy(), reference_features(grey), rtol=1e-4, atol=1e-4)


def test_detector_wrong_checksum_leaves_no_file(server, cache):
    with pytest.raises(dl.DownloadError, match="checksum mismatch"):
        get_detector(server + "/tiny.pt", device="cpu", sha256="0" * 64)
    assert cached_files(cache) == []


def test_detector_interrupted_transfer_fails_cleanly(server, cache, monkeypatch):
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)  # skip retry back-off
    with pytest.raises(dl.DownloadError, match="could not download"):
        get_detector(server + "/cut.pt", device="cpu")
    assert cached_files(cache) == []


def test_unknown_detector_and_bad_file(tmp_path):
    with pytest.raises(ValueError, match="unknown detector"):
        get_detector("no-such-detector", device="cpu")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        get_detector(str(bad), device="cpu")


# ----------------------------------------------------------------------------
# End to end: folders, generators, the CLI.

def write_pngs(folder, arrays):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i:03d}.png")


def np_stats(feats):
    return feats.mean(0), np.cov(feats, rowvar=False)


@pytest.fixture
def png_sets(tmp_path):
    rng = np.random.default_rng(12)
    a = rng.integers(0, 256, [10, 8, 8, 3], dtype=np.uint8)
    b = np.clip(rng.integers(0, 256, [12, 8, 8, 3]) * 0.7 + 40, 0, 255).astype(np.uint8)
    write_pngs(tmp_path / "a", a)
    write_pngs(tmp_path / "b", b)
    det_path = tmp_path / "tiny.pt"
    det_path.write_bytes(tiny_detector_bytes(PROJ_SMALL))
    return tmp_path, a.transpose(0, 3, 1, 2), b.transpose(0, 3, 1, 2), str(det_path)


def run_cli(args):
    res = CliRunner().invoke(metrics_cli, args, catch_exceptions=False)
    return res.exit_code, res.output


def test_cli_on_png_folders(png_sets):
    root, a, b, det = png_sets
    fa, fb = reference_features(a, PROJ_SMALL), reference_features(b, PROJ_SMALL)
    code, out = run_cli(["--images", str(root / "a"), "--ref", str(root / "b"), "--metrics", "fid,kid,pr",
                         "--detector", det, "--device", "cpu", "--batch", "4", "--kid-subsets", "2"])
    assert code == 0, out
    res = json.loads(out.strip().splitlines()[-1])
    assert res["num"] == 10 and res["num_ref"] == 12
    ma, sa = np_stats(fa)
    mb, sb = np_stats(fb)
    assert res["fid"] == pytest.approx(fid_closed_form(ma, sa, mb, sb), rel=1e-3, abs=1e-3)
    assert (res["precision"], res["recall"]) == pytest.approx(precision_recall(fb, fa))
    assert np.isfinite(res["kid"]) and res["kid_std"] >= 0  # exact value: see the next test

    code, out = run_cli(["--images", str(root / "b"), "--save-ref-stats", str(root / "b.npz"),
                         "--detector", det, "--device", "cpu"])
    assert code == 0, out
    with np.load(root / "b.npz") as ref:
        np.testing.assert_allclose(ref["mu"], mb, rtol=1e-5, atol=1e-6)
    code, out = run_cli(["--images", str(root / "a"), "--ref", str(root / "b.npz"),
                         "--detector", det, "--device", "cpu"])
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1])["fid"] == pytest.approx(res["fid"], rel=1e-6)


def test_kid_against_folder_equals_double_loop(png_sets):
    root, a, b, det = png_sets
    res = compute_metrics(gen=str(root / "a"), ref=str(root / "a"), metrics=("kid",), detector=det,
                          device="cpu", kid_subsets=1)
    fa = reference_features(a, PROJ_SMALL)
    assert res["kid"] == pytest.approx(kid_double_loop(fa, fa), rel=1e-4, abs=1e-8)


GEN_SRC = '''
import torch
from torch_utils import persistence

@persistence.persistent_class
class TinyGenerator(torch.nn.Module):
    def __init__(self, z_dim=4, c_dim=0, img_resolution=8, img_channels=3):
        super().__init__()
        self.z_dim, self.c_dim = z_dim, c_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        g = torch.Generator().manual_seed(0)
        shape = [z_dim + c_dim, img_channels * img_resolution ** 2]
        self.weight = torch.nn.Parameter(torch.randn(shape, generator=g))

    def forward(self, z, c):
        x = torch.cat([z, c], dim=1) @ self.weight
        return torch.tanh(x).reshape(-1, self.img_channels, self.img_resolution, self.img_resolution) * 1.2
'''


def make_generator_pickle(tmp_path, c_dim):
    src = tmp_path / f"tiny_gen_{c_dim}.py"
    src.write_text(GEN_SRC)
    spec = importlib.util.spec_from_file_location(f"tiny_gen_{c_dim}", src)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    G = mod.TinyGenerator(c_dim=c_dim)
    path = tmp_path / f"gen{c_dim}.pkl"
    with open(path, "wb") as f:
        pickle.dump(dict(G=G, D=None, G_ema=G), f)
    return G, str(path)


@pytest.mark.parametrize("c_dim", [0, 3])
def test_cli_on_generator_pickle(png_sets, c_dim):
    root, a, b, det = png_sets
    G, pkl = make_generator_pickle(root, c_dim)
    num, seed = 9, 5
    imgs = []
    for s in range(seed, seed + num):  # StyleGAN generate.py's per-seed latents
        rs = np.random.RandomState(s)
        z = rs.randn(4)
        c = np.zeros(c_dim)
        if c_dim:
            c[rs.randint(c_dim)] = 1
        with torch.no_grad():
            x = G(torch.tensor(z[None], dtype=torch.float32), torch.tensor(c[None], dtype=torch.float32))
        imgs.append(np.floor(np.clip(x.double().numpy() * 127.5 + 128, 0, 255)).astype(np.uint8))
    mg, sg = np_stats(reference_features(np.concatenate(imgs), PROJ_SMALL))
    mb, sb = np_stats(reference_features(b, PROJ_SMALL))
    code, out = run_cli(["--gen", pkl, "--ref", str(root / "b"), "--num", str(num), "--seed", str(seed),
                         "--detector", det, "--device", "cpu", "--batch", "4"])
    assert code == 0, out
    res = json.loads(out.strip().splitlines()[-1])
    assert res["num"] == num
    assert res["fid"] == pytest.approx(fid_closed_form(mg, sg, mb, sb), rel=1e-3, abs=1e-3)


def test_cli_errors_are_one_line(png_sets):
    root, a, b, det = png_sets
    cases = [
        (["--images", str(root / "a"), "--gen", "x.pkl", "--ref", str(root / "b")], "exactly one"),
        (["--images", str(root / "a")], "nothing to do"),
        (["--images", str(root / "a"), "--ref", str(root / "b"), "--metrics", "fid,isc"], "unknown metric"),
        (["--gen", str(root / "missing.pkl"), "--ref", str(root / "b"), "--detector", det,
          "--device", "cpu"], "missing.pkl"),
        (["--images", str(root / "a"), "--ref", str(root / "stats.npz"), "--metrics", "kid",
          "--detector", det, "--device", "cpu"], "need reference images"),
        (["--images", str(root / "a"), "--ref", str(root / "stats5.npz"), "--detector", det,
          "--device", "cpu"], "use the detector"),
    ]
    np.savez(root / "stats.npz", mu=np.zeros(6), sigma=np.eye(6))
    np.savez(root / "stats5.npz", mu=np.zeros(5), sigma=np.eye(5))
    for args, needle in cases:
        res = CliRunner().invoke(metrics_cli, args)
        assert res.exit_code != 0, args
        assert needle in res.output, res.output
        assert "Traceback" not in res.output


# ----------------------------------------------------------------------------
# StyleGAN's metric names, per-figure detectors, and the defaults shared with `gan-refine`.

from gan_refine.metrics import (ALIASES, METRICS, ModuleDetector, default_detector,  # noqa: E402
                                default_num, metric_detectors, named_results, register_detector,
                                resolve_metric_names)
from gan_refine.metrics import reference_features as cached_reference_features  # noqa: E402
from gan_refine.metrics.detectors import INCEPTION  # noqa: E402


def test_metric_aliases():
    assert METRICS == ("fid", "kid", "pr")
    assert resolve_metric_names("fid50k_full") == (("fid",), 50000, {"ref_num": None})
    assert resolve_metric_names(["kid50k_full", "PR50K3_FULL", "fid"]) == (
        ("kid", "pr", "fid"), 50000, {"ref_num": None, "pr_k": 3})
    assert resolve_metric_names("fid,kid,fid") == (("fid", "kid"), None, {})
    assert resolve_metric_names("pr50k3") == (("pr",), 50000, {"ref_num": 50000, "pr_k": 3})
    assert {ALIASES[n][:2] for n in ("fid50k_full", "kid50k_full", "pr50k3_full")} == {
        ("fid", 50000), ("kid", 50000), ("pr", 50000)}
    with pytest.raises(ValueError, match="unknown metric.*is50k.*fid50k_full"):
        resolve_metric_names("fid,is50k")
    with pytest.raises(ValueError, match="fid50k_full and kid50k disagree on ref_num"):
        resolve_metric_names("fid50k_full,kid50k")
    with pytest.raises(ValueError, match="expand aliases"):
        compute_metrics(gen=np.zeros([2, 8, 8], np.uint8), metrics=("fid50k_full",))


def test_named_results_as_stylegan_reports_them():
    res = dict(fid=1.0, kid=0.1, kid_std=0.01, precision=0.7, recall=0.6)
    assert named_results(res, "fid50k_full,kid50k_full,pr50k3_full") == {
        "fid50k_full": 1.0, "kid50k_full": 0.1, "kid50k_full_std": 0.01,
        "pr50k3_full_precision": 0.7, "pr50k3_full_recall": 0.6}
    assert named_results(res, ["pr", "fid"]) == dict(precision=0.7, recall=0.6, fid=1.0)


def test_default_detector_and_num(tmp_path):
    # Table entries: the digits reference names its detector and protocol; EDM's do not.
    assert default_detector("fid-ref-digits-16x16") == "digits"
    assert default_num("fid-ref-digits-16x16") == 2000
    assert default_detector("fid-ref-cifar10-32x32") == INCEPTION
    assert default_num("fid-ref-cifar10-32x32") == 50000
    assert default_detector("https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz") == INCEPTION
    # A shipped file given by its path is still the table's entry.
    from gan_refine import pretrained
    assert default_detector(pretrained.resolve("fid-ref-digits-16x16")) == "digits"
    # A statistics file gan_refine wrote records its detector; EDM's files and folders do not.
    fs = FeatureStats()
    fs.append(np.random.default_rng(0).standard_normal([5, 3]))
    save_ref_stats(tmp_path / "mine.npz", fs, detector_name="toy")
    assert default_detector(str(tmp_path / "mine.npz")) == "toy"
    np.savez(tmp_path / "edm.npz", mu=np.zeros(3), sigma=np.eye(3))
    assert default_detector(str(tmp_path / "edm.npz")) == INCEPTION
    (tmp_path / "broken.npz").write_bytes(b"nonsense")
    assert default_detector(str(tmp_path / "broken.npz")) == INCEPTION
    assert default_detector(str(tmp_path)) == INCEPTION and default_detector(None) == INCEPTION
    # An entry given by the caller wins (the CLI has looked it up already).
    assert default_detector("anything", dict(detector="x", role="fid-ref")) == "x"
    assert metric_detectors(("fid", "pr"), "a", "b") == {"fid": "a", "pr": "b"}
    assert metric_detectors(("kid", "pr"), "a") == {"kid": "a", "pr": "a"}


class _Proj(torch.nn.Module):
    """A toy detector: per-channel means and mean squares times a fixed matrix."""

    def __init__(self, proj):
        super().__init__()
        self.register_buffer("proj", torch.from_numpy(proj))

    def forward(self, x):
        u = x.to(torch.float32) / 255.0
        return torch.cat([u.mean(dim=[2, 3]), (u * u).mean(dim=[2, 3])], dim=1) @ self.proj


class _Corner(torch.nn.Module):
    """Another toy detector with a different geometry: the raw top-left 2x2 pixels."""

    def forward(self, x):
        return x[:, :, :2, :2].reshape(x.shape[0], -1).to(torch.float32) / 255.0


@pytest.fixture
def two_detectors():
    proj = np.random.default_rng(20).standard_normal([6, 6]).astype(np.float32)
    register_detector("toy-a", lambda device: ModuleDetector(_Proj(proj), name="toy-a", device=device),
                      overwrite=True)
    register_detector("toy-b", lambda device: ModuleDetector(_Corner(), name="toy-b", device=device),
                      overwrite=True)
    made = ["toy-a", "toy-b"]
    yield made
    for name in made:
        unregister_detector(name)
    detectors._LOADED.clear()


class _CountingGenerator(torch.nn.Module):
    z_dim, c_dim = 4, 0

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn([4, 3 * 8 * 8], generator=torch.Generator().manual_seed(0)))
        self.calls = []

    def forward(self, z, c):
        self.calls.append(z.shape[0])
        return torch.tanh(z @ self.weight).reshape(-1, 3, 8, 8)


def test_precision_recall_with_its_own_detector(png_sets, two_detectors):
    root, a, b, _ = png_sets
    ref = str(root / "b")
    only_a = compute_metrics(gen=str(root / "a"), ref=ref, metrics=("fid", "pr"), detector="toy-a", device="cpu")
    only_b = compute_metrics(gen=str(root / "a"), ref=ref, metrics=("pr",), detector="toy-b", device="cpu")
    both = compute_metrics(gen=str(root / "a"), ref=ref, metrics=("fid", "pr"), detector="toy-a",
                           pr_detector="toy-b", device="cpu")
    assert both["fid"] == pytest.approx(only_a["fid"], rel=1e-12)
    assert (both["precision"], both["recall"]) == (only_b["precision"], only_b["recall"])
    assert (both["precision"], both["recall"]) != (only_a["precision"], only_a["recall"])
    assert both["detectors"] == dict(fid="toy-a", precision="toy-b", recall="toy-b")
    assert both["detector"] == "toy-a" and both["pr_detector"] == "toy-b"
    assert only_a["detectors"] == dict(fid="toy-a", precision="toy-a", recall="toy-a")

    # Generated images are made once and fed to both detectors.
    G = _CountingGenerator()
    compute_metrics(gen=G, ref=ref, metrics=("fid", "pr"), num=10, batch_size=5, detector="toy-a",
                    pr_detector="toy-b", device="cpu")
    assert G.calls[-2:] == [5, 5] and len(G.calls) <= 3  # (the generic adapter probes once first)

    # Reference features computed once, reused as {detector name: FeatureStats}.
    cached = cached_reference_features(ref, ("fid", "pr"), "toy-a", "toy-b", device="cpu")
    assert set(cached) == {"toy-a", "toy-b"}
    again = compute_metrics(gen=str(root / "a"), ref=cached, metrics=("fid", "pr"), detector="toy-a",
                            pr_detector="toy-b", device="cpu")
    assert again["fid"] == both["fid"] and again["precision"] == both["precision"]
    with pytest.raises(ValueError, match="features of one detector"):
        compute_metrics(gen=str(root / "a"), ref=cached["toy-a"], metrics=("fid", "pr"), detector="toy-a",
                        pr_detector="toy-b", device="cpu")


def test_pr_alone_does_not_load_the_fid_detector(png_sets, two_detectors):
    root, _, _, _ = png_sets
    loaded = []
    register_detector("never", lambda device: loaded.append(device) or 1 / 0, overwrite=True)
    try:
        res = compute_metrics(gen=str(root / "a"), ref=str(root / "b"), metrics=("pr",), detector="never",
                              pr_detector="toy-b", device="cpu")
    finally:
        unregister_detector("never")
    assert not loaded and res["detector"] == "toy-b" and res["detectors"]["precision"] == "toy-b"


def test_cli_aliases_and_pr_detector(png_sets, two_detectors):
    root, a, b, det = png_sets
    res = CliRunner().invoke(metrics_cli, [
        "--images", str(root / "a"), "--ref", str(root / "b"),
        "--metrics", "fid50k_full,kid50k_full,pr50k3_full", "--detector", "toy-a", "--pr-detector",
        "toy-b", "--device", "cpu", "--kid-subsets", "2"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    assert rec["metrics"] == ["fid", "kid", "pr"] and rec["requested"][0] == "fid50k_full"
    assert rec["num"] == 10 and rec["pr_k"] == 3
    assert set(rec["results"]) == {"fid50k_full", "kid50k_full", "kid50k_full_std",
                                   "pr50k3_full_precision", "pr50k3_full_recall"}
    assert rec["results"]["fid50k_full"] == rec["fid"]
    assert rec["detectors"] == dict(fid="toy-a", kid="toy-a", kid_std="toy-a", precision="toy-b",
                                    recall="toy-b")

    res = CliRunner().invoke(metrics_cli, ["--images", str(root / "a"), "--ref", str(root / "b"),
                                           "--metrics", "fid50k_full", "--num", "5", "--detector", "toy-a",
                                           "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "--num 5 replaces the 50,000 generated images of fid50k_full" in res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["num"] == 5


def test_cli_default_detector_follows_the_reference():
    # The digits reference names the 'digits' detector: no --detector needed (as in gan-refine).
    res = CliRunner().invoke(metrics_cli, ["--gen", "digits", "--ref", "fid-ref-digits-16x16", "--num", "64",
                                           "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    assert rec["detector"] == "digits" and rec["detectors"] == {"fid": "digits"} and rec["num"] == 64
