"""Feature statistics and the distances built on them: FID, KID, precision/recall, data copying.

Everything here works on plain feature matrices (numpy or torch, [N, D]) and is independent of
the detector that produced them. Means and covariances are accumulated in float64, the way
the StyleGAN and EDM metric code does, because the covariance of 2048-d features over 50k
samples loses several digits in float32.
"""

import math
import warnings

import numpy as np
import scipy.linalg
import torch

__all__ = ["FeatureStats", "frechet_distance", "kid_subsets", "kernel_inception_distance",
           "precision_recall", "data_copying"]


def _as_float64(x):
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a [N, D] matrix, got shape {x.shape}")
    return x


class FeatureStats:
    """Running mean and covariance of feature vectors, optionally keeping the vectors too.

    Batches are merged with the pairwise update of Chan et al. (batch mean and centred scatter,
    then a rank-one correction), so a large common offset in the features does not cancel
    catastrophically the way sum(x x^T)/n - mu mu^T can.

    Args:
        capture_all: keep every feature vector (float32) for KID and precision/recall.
        max_items: stop accepting vectors after this many (None = no limit).
    """

    def __init__(self, capture_all=False, max_items=None):
        self.capture_all = bool(capture_all)
        self.max_items = None if max_items is None else int(max_items)
        self.num_items = 0
        self.feature_dim = None
        self._mean = None
        self._scatter = None
        self._all = []

    def is_full(self):
        return self.max_items is not None and self.num_items >= self.max_items

    def append(self, features):
        """Add a [B, D] batch (numpy or torch); vectors past `max_items` are dropped."""
        x = _as_float64(features)
        if self.max_items is not None:
            x = x[:max(self.max_items - self.num_items, 0)]
        if x.shape[0] == 0:
            return
        if self.feature_dim is None:
            self.feature_dim = x.shape[1]
            self._mean = np.zeros(self.feature_dim, dtype=np.float64)
            self._scatter = np.zeros([self.feature_dim, self.feature_dim], dtype=np.float64)
        elif x.shape[1] != self.feature_dim:
            raise ValueError(f"feature size changed from {self.feature_dim} to {x.shape[1]}")
        if not np.isfinite(x).all():
            raise ValueError("the detector returned non-finite features (NaN or inf)")
        nb = x.shape[0]
        mb = x.mean(axis=0)
        xc = x - mb
        sb = xc.T @ xc
        na = self.num_items
        n = na + nb
        delta = mb - self._mean
        self._mean += delta * (nb / n)
        self._scatter += sb + np.outer(delta, delta) * (na * nb / n)
        self.num_items = n
        if self.capture_all:
            self._all.append(x.astype(np.float32))

    @property
    def mean(self):
        self._require(1)
        return self._mean.copy()

    @property
    def cov(self):
        """Unbiased covariance (divides by N - 1, like np.cov and EDM's reference files)."""
        self._require(2)
        return self._scatter / (self.num_items - 1)

    def get_mean_cov(self):
        return self.mean, self.cov

    def get_all(self):
        """All captured vectors as one float32 [N, D] array."""
        if not self.capture_all:
            raise RuntimeError("these statistics were gathered without capture_all=True")
        self._require(1)
        return np.concatenate(self._all, axis=0)

    def _require(self, n):
        if self.num_items < n:
            raise ValueError(f"need at least {n} feature vector(s), have {self.num_items}")


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)). The square root is
    scipy's sqrtm; when it fails on a (near-)singular product, both covariances get `eps` on
    the diagonal and it is retried, as the common FID implementations do. Imaginary parts
    that round-off leaves behind are discarded; large ones are an error.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma "
                         f"{sigma1.shape} vs {sigma2.shape} (were they made with the same detector?)")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: sigma1 @ sigma2 is singular; adding {eps} to the diagonals",
                      RuntimeWarning, stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: the matrix square root has a large imaginary component "
                             f"({np.abs(covmean.imag).max():.3g}); the covariances are not "
                             f"valid (too few samples for the feature size?)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _sqrtm(a):
    # scipy >= 1.16 deprecates `disp`; older versions print instead of raising, so finiteness
    # of the result is what the caller checks either way.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return scipy.linalg.sqrtm(a)
        except (np.linalg.LinAlgError, ValueError):
            return np.full_like(a, np.nan)


def kid_subsets(feat1, feat2, num_subsets=100, max_subset_size=1000, seed=0):
    """Unbiased MMD^2 estimates with k(x, y) = (x.y / d + 1)^3, one per random subset.

    Each subset draws m = min(len(feat1), len(feat2), max_subset_size) rows without
    replacement from each side (Binkowski et al. 2018, as StyleGAN's KID does). Returns a
    float64 array of `num_subsets` values; their mean is the KID.
    """
    x_all = _as_float64(feat1)
    y_all = _as_float64(feat2)
    if x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"KID: feature sizes differ ({x_all.shape[1]} vs {y_all.shape[1]})")
    d = x_all.shape[1]
    m = min(len(x_all), len(y_all), int(max_subset_size))
    if m < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    rng = np.random.RandomState(seed)
    out = np.empty(int(num_subsets), dtype=np.float64)
    for i in range(int(num_subsets)):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        kxx, kyy, kxy = _cubic_kernel(x, x, d), _cubic_kernel(y, y, d), _cubic_kernel(x, y, d)
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        out[i] = within - 2 * kxy.sum() / (m * m)
    return out


def _cubic_kernel(a, b, d):
    k = a @ b.T
    k /= d
    k += 1
    return k * k * k  # numpy's ** 3 goes through pow(), several times slower


def kernel_inception_distance(feat1, feat2, num_subsets=100, max_subset_size=1000, seed=0):
    """(mean, std) of `kid_subsets`; the mean is the KID."""
    vals = kid_subsets(feat1, feat2, num_subsets, max_subset_size, seed)
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


def _kth_nn_radii(feat, k, row_batch):
    # The k-th neighbour excluding the point itself is the (k+1)-th smallest distance.
    radii = torch.empty(len(feat), dtype=feat.dtype)
    for s in range(0, len(feat), row_batch):
        dist = torch.cdist(feat[s:s + row_batch], feat)
        radii[s:s + row_batch] = dist.kthvalue(k + 1, dim=1).values
    return radii


def _fraction_covered(manifold, radii, probes, row_batch):
    covered = torch.zeros(len(probes), dtype=torch.bool)
    for s in range(0, len(probes), row_batch):
        dist = torch.cdist(probes[s:s + row_batch], manifold)
        covered[s:s + row_batch] = (dist <= radii.unsqueeze(0)).any(dim=1)
    return float(covered.to(torch.float64).mean())


def precision_recall(real, gen, k=3, row_batch=512):
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

    precision: fraction of generated vectors inside some real vector's k-NN ball;
    recall: fraction of real vectors inside some generated vector's k-NN ball.
    Returns (precision, recall). Distances are Euclidean, computed in float64.
    """
    real = torch.from_numpy(_as_float64(real))
    gen = torch.from_numpy(_as_float64(gen))
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f"precision/recall: feature sizes differ ({real.shape[1]} vs {gen.shape[1]})")
    if min(len(real), len(gen)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples on each side")
    real_r = _kth_nn_radii(real, k, row_batch)
    gen_r = _kth_nn_radii(gen, k, row_batch)
    precision = _fraction_covered(real, real_r, gen, row_batch)
    recall = _fraction_covered(gen, gen_r, real, row_batch)
    if math.isnan(precision) or math.isnan(recall):
        raise ValueError("precision/recall: non-finite distances")
    return precision, recall


def _mann_whitney_z(held_out, gen):
    """The normal-approximation z of the Mann-Whitney U that counts the (held-out, generated)
    pairs where the generated value is the larger (ties count a half): negative when the
    generated values are the smaller ones. No tie correction: the values are distances."""
    import scipy.stats
    n, m = len(held_out), len(gen)
    u = float(scipy.stats.mannwhitneyu(gen, held_out, alternative="two-sided", method="asymptotic").statistic)
    return (u - n * m / 2.0) / math.sqrt(n * m * (n + m + 1) / 12.0)


def data_copying(train, held_out, gen, cells=10, min_per_cell=20, seed=0, row_batch=512):
    """The data-copying statistic C_T of Meehan, Chaudhuri and Dasgupta (AISTATS 2020).

    Each vector's distance to its nearest training vector is compared between generated vectors
    and held-out real ones (which the model never saw) inside each of `cells` k-means cells of
    the training vectors, by the z-score of a Mann-Whitney U test, and the cells' z-scores are
    averaged with the held-out vectors' share of each cell as weights. Cells with fewer than
    `min_per_cell` generated vectors (the model rarely goes there) or fewer than 2 held-out ones
    are left out. Around 0: generated vectors lie as close to the training set as fresh real
    ones do; clearly negative (about -3 and below): closer, that is the model copies its
    training data; positive: further away, e.g. blurry or off-manifold samples.
    Returns (C_T, the held-out share of the cells used).
    """
    import scipy.cluster.vq
    train, held_out, gen = (torch.from_numpy(_as_float64(a)) for a in (train, held_out, gen))
    if not train.shape[1] == held_out.shape[1] == gen.shape[1]:
        raise ValueError(f"data_copying: feature sizes differ ({train.shape[1]}, {held_out.shape[1]}, {gen.shape[1]})")
    if len(train) < cells:
        raise ValueError(f"data_copying: {cells} cells need at least as many training vectors, got {len(train)}")
    centroids, _ = scipy.cluster.vq.kmeans2(train.numpy(), cells, minit="++", seed=seed)
    centroids = torch.from_numpy(centroids)

    def nearest(probes):  # (distance to the nearest training vector, cell index)
        dist, cell = [], []
        for s in range(0, len(probes), row_batch):
            dist.append(torch.cdist(probes[s:s + row_batch], train).min(1).values)
            cell.append(torch.cdist(probes[s:s + row_batch], centroids).argmin(1))
        return torch.cat(dist).numpy(), torch.cat(cell).numpy()

    d_test, c_test = nearest(held_out)
    d_gen, c_gen = nearest(gen)
    total, weight = 0.0, 0.0
    for k in range(cells):
        a, b = d_test[c_test == k], d_gen[c_gen == k]
        if len(b) < min_per_cell or len(a) < 2:
            continue
        share = len(a) / len(d_test)
        total += share * _mann_whitney_z(a, b)
        weight += share
    if weight == 0:
        raise ValueError(f"data_copying: no cell holds {min_per_cell} generated and 2 held-out vectors")
    return total / weight, weight
