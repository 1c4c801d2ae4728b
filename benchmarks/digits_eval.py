"""The digits evaluator of the quality benchmarks: every figure of one generator (or image set).

Figures, on `num` images from generator seeds 0..num-1 (the `gan-refine --metrics` protocol):
- fid, kid: the shipped digits detector's 64-d features against the 1,437 training images;
- fid_test: the same features against the 360 held-out images (which no model, and no data
  term, ever sees);
- precision, recall (k = 3; Kynkaanniemi et al. 2019) against the training images, in the
  detector's features and, as a second detector independent of the first, in raw pixels
  (256-d, uint8 / 255): pixel_fid, pixel_precision, pixel_recall;
- class balance: total-variation distance between the classes the digits classifier assigns
  to the images and the training split's class frequencies (0 = the same); for conditional
  generators, label_accuracy (images classified as the class they were asked for);
- near-duplicates: the share of images closer (pixel L2) to some training image than 95% of
  held-out real images are to their nearest training image (dup_rate; about 0.05 for real
  images, by construction);
- data copying: Meehan et al.'s C_T (gan_refine.metrics.data_copying) in pixels, over 10 k-means
  cells of the training images: whether the images lie closer to the training images than
  held-out real images do (copying_ct clearly below 0, about -3 and less) or further away (above
  0). Unlike dup_rate, it does not fall with blur alone: an exact sampler scores about 0 on both,
  with dup_rate at 0.05.
"""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gan_refine.metrics.compute import GeneratorSource, quantize  # noqa: E402
from gan_refine.metrics.detectors import get_detector  # noqa: E402
from gan_refine.metrics.stats import data_copying, frechet_distance, kernel_inception_distance, precision_recall  # noqa: E402
from gan_refine.zoo.digits_data import load_digits_split  # noqa: E402

NUM_CLASSES = 10


def _fid(a, b):
    return float(frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))


def _nearest_dist(probes, bank, batch=1000):
    out = []
    for i in range(0, len(probes), batch):
        out.append(torch.cdist(probes[i:i + batch], bank).min(1).values)
    return torch.cat(out)


class DigitsEvaluator:
    def __init__(self, device="cpu", num=2000):
        self.device, self.num = device, num
        self.detector = get_detector("digits", device=device)
        self.module = self.detector.module if hasattr(self.detector, "module") else None
        x_train, y_train, x_test, _ = load_digits_split(16)
        self.train_u8, self.test_u8 = quantize(x_train), quantize(x_test)
        self.train_feat = self._features(self.train_u8)
        self.test_feat = self._features(self.test_u8)
        self.train_pix = self._pixels(self.train_u8)
        self.test_pix = test_pix = self._pixels(self.test_u8)
        self.class_freq = np.bincount(y_train.numpy(), minlength=NUM_CLASSES) / len(y_train)
        # Near-duplicate threshold: the 5th percentile of held-out real images' distance to
        # their nearest training image.
        self.dup_threshold = float(torch.quantile(_nearest_dist(test_pix, self.train_pix), 0.05))

    def _features(self, u8, batch=500):
        return torch.cat([self.detector(u8[i:i + batch]).double().cpu()
                          for i in range(0, len(u8), batch)]).numpy()

    def _logits(self, u8, batch=500):
        net = self.detector.module
        with torch.no_grad():
            return torch.cat([net(u8[i:i + batch].to(self.device)).float().cpu() for i in range(0, len(u8), batch)])

    @staticmethod
    def _pixels(u8):
        return u8.flatten(1).float() / 255.0

    def generator_images(self, G, num=None, seed=0):
        """uint8 images of G at seeds seed..seed+num-1 and the labels they were drawn with (or None)."""
        num = num or self.num
        src = GeneratorSource(G, num=num, seed=seed)
        images = torch.cat(list(src.iter_batches(250))).cpu()
        labels = None
        if getattr(G, "c_dim", 0):
            labels = torch.as_tensor(src.latents(list(range(seed, seed + num)))[1]).argmax(1).cpu()
        return images, labels

    def fid_kid(self, images_u8):
        f = self._features(images_u8)
        kid, _ = kernel_inception_distance(f, self.train_feat, num_subsets=50, max_subset_size=500, seed=0)
        return _fid(f, self.train_feat), float(kid)

    def figures(self, images_u8, labels=None):
        f = self._features(images_u8)
        pix = self._pixels(images_u8)
        kid, _ = kernel_inception_distance(f, self.train_feat, num_subsets=50, max_subset_size=500, seed=0)
        prec, rec = precision_recall(self.train_feat, f, k=3)
        pprec, prec_pix_rec = precision_recall(self.train_pix.double().numpy(), pix.double().numpy(), k=3)
        pred = self._logits(images_u8).argmax(1)
        hist = np.bincount(pred.numpy(), minlength=NUM_CLASSES) / len(pred)
        out = dict(fid=_fid(f, self.train_feat), kid=float(kid), fid_test=_fid(f, self.test_feat),
                   precision=prec, recall=rec,
                   pixel_fid=_fid(pix.double().numpy(), self.train_pix.double().numpy()),
                   pixel_precision=pprec, pixel_recall=prec_pix_rec,
                   class_tv=float(0.5 * np.abs(hist - self.class_freq).sum()),
                   class_min=float(hist.min()), class_max=float(hist.max()),
                   dup_rate=float((_nearest_dist(pix, self.train_pix) < self.dup_threshold).float().mean()))
        try:
            out["copying_ct"], out["copying_cells_share"] = data_copying(self.train_pix, self.test_pix, pix, cells=10)
        except ValueError:  # too few images for any cell (tiny --quick runs)
            out["copying_ct"], out["copying_cells_share"] = float("nan"), 0.0
        if labels is not None:
            out["label_accuracy"] = float((pred == labels).float().mean())
        return out

    def of_generator(self, G):
        images, labels = self.generator_images(G)
        return self.figures(images, labels)

    def of_real(self, which="test"):
        """The same figures for real images (the held-out split: the floor)."""
        return self.figures(self.test_u8 if which == "test" else self.train_u8)
