"""The digits feature network: a small CNN classifier whose penultimate layer is the detector of
the offline digits FID/KID.

    python -m gan_refine.zoo.digits_classifier --out gan_refine/zoo/models/digits-detector.pt

trains it on the training split of `digits_data` (1x16x16, [-1, 1]) and exports it as
TorchScript. The exported module follows the detector convention of `gan_refine.metrics`: it
takes uint8 images [N, 1, H, W] (float images in [-1, 1] are accepted too), resizes to 16x16
when needed, and returns 64-d features when called with `return_features=True`, class logits
otherwise. `register_digits_detector()` makes `get_detector('digits')` load the shipped file.
"""

import argparse
import io
import json
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .digits_data import NUM_CLASSES, load_digits_split

__all__ = ["DigitsClassifier", "DigitsDetector", "train_classifier", "export_detector",
           "accuracy", "register_digits_detector", "export_reference_stats", "DETECTOR_PATH",
           "DETECTOR_NAME", "FEATURE_DIM", "REF_STATS_PATH", "EVAL_NUM"]

DETECTOR_NAME = "digits"
DETECTOR_PATH = Path(__file__).with_name("models") / "digits-detector.pt"
FEATURE_DIM = 64
# FID reference statistics of the training split under the shipped detector (EDM .npz layout).
REF_STATS_PATH = Path(__file__).with_name("models") / "fid-ref-digits-16x16.npz"
# Generated images per digits-FID evaluation (the zoo's protocol; the standard FID uses 50k).
EVAL_NUM = 2000
RESOLUTION = 16


class DigitsClassifier(torch.nn.Module):
    """Two conv stages (16 -> 8 -> 4 px), a 64-d feature layer, a linear class head.

    Features are the pre-activation output of the 64-d layer: no unit is clipped at zero, so
    the feature covariance stays full rank, which the Frechet distance needs.
    """

    def __init__(self, feature_dim=FEATURE_DIM, width=32, dropout=0.3):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(width, 2 * width, 3, padding=1), torch.nn.BatchNorm2d(2 * width), torch.nn.ReLU(),
            torch.nn.Conv2d(2 * width, 2 * width, 3, padding=1), torch.nn.BatchNorm2d(2 * width), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
        )
        self.fc = torch.nn.Linear(2 * width * (RESOLUTION // 4) ** 2, feature_dim)
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(feature_dim, NUM_CLASSES)

    def features(self, images):
        """[N, 1, 16, 16] float in [-1, 1] -> [N, feature_dim]."""
        return self.fc(self.body(images))

    def forward(self, images):
        return self.head(self.drop(F.relu(self.features(images))))


class DigitsDetector(torch.nn.Module):
    """The exported wrapper: uint8 in (the metrics convention), features or logits out.

    Features are standardised per dimension with the training split's mean and spread: the KID
    kernel (x.y / d + 1)^3 assumes features of order one (raw ones have norms ~30, which makes
    KID estimates swing by whole units), and FID then weighs every dimension alike.
    """

    def __init__(self, net: DigitsClassifier, feature_mean=None, feature_std=None):
        super().__init__()
        self.net = net
        dim = net.fc.out_features
        self.register_buffer("feature_mean", torch.zeros(dim) if feature_mean is None else feature_mean.clone())
        self.register_buffer("feature_std", torch.ones(dim) if feature_std is None else feature_std.clone())
        # ModuleDetector reads these attributes, also from the TorchScript module.
        self.img_channels = 1
        self.img_resolution = RESOLUTION
        self.feature_dim = dim
        self.input_range = "uint8"

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if images.dtype == torch.uint8:
            # Inverse of the quantisation x * 127.5 + 128 used for generated images.
            x = (images.to(torch.float32) - 128.0) / 127.5
        else:
            x = images.to(torch.float32)
        res = self.img_resolution
        if x.shape[2] != res or x.shape[3] != res:
            # The aten op itself, not F.interpolate: scripting F.interpolate compiles every mode it
            # supports, and newer torch versions add modes older ones cannot load.
            x = torch._C._nn._upsample_bilinear2d_aa(x, [res, res], False, None)
        if return_features:
            return (self.net.features(x) - self.feature_mean) / self.feature_std
        return self.net(x)


def _random_shift(x, gen, max_shift=2):
    """Translate each image by up to `max_shift` pixels, filling with background (-1)."""
    n, _, h, w = x.shape
    pad = F.pad(x, [max_shift] * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, [n], generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, [n], generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None])[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, :].expand(n, h, w)
    idx = torch.arange(n)[:, None, None].expand(n, h, w)
    return pad[idx, 0, rows, cols][:, None]


def _augment(x, gen):
    # Small shifts plus a mild contrast jitter: generated digits are never perfectly centred or
    # perfectly saturated, and the features should not hinge on either.
    x = _random_shift(x, gen)
    gain = 1 + 0.15 * (torch.rand([x.shape[0], 1, 1, 1], generator=gen) * 2 - 1)
    return ((x + 1) * gain - 1).clamp(-1, 1)


def accuracy(model, images, labels, batch=512):
    """Fraction of `images` classified correctly; `images` as the model expects them."""
    correct = 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            correct += (model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum().item()
    return correct / len(images)


def train_classifier(seed=0, epochs=40, batch=64, lr=2e-3, log=print):
    """Train on the training split; returns (classifier in eval mode, info dict)."""
    x_train, y_train, x_test, y_test = load_digits_split(res=RESOLUTION)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # weight init and dropout masks
        net = DigitsClassifier()
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        steps_per_epoch = (len(x_train) + batch - 1) // batch
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
        t0 = time.time()
        for epoch in range(epochs):
            net.train()
            perm = torch.randperm(len(x_train), generator=gen)
            total = 0.0
            for i in range(0, len(perm), batch):
                idx = perm[i:i + batch]
                loss = F.cross_entropy(net(_augment(x_train[idx], gen)), y_train[idx], label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            if log and (epoch % 10 == 9 or epoch == epochs - 1):
                log(f"epoch {epoch + 1}/{epochs}  loss {total / len(x_train):.4f}  "
                    f"test acc {accuracy(net, x_test, y_test):.4f}  {time.time() - t0:.0f}s")
    net.eval()
    info = dict(seed=seed, epochs=epochs, batch=batch, lr=lr, train_seconds=round(time.time() - t0, 1),
                params=sum(p.numel() for p in net.parameters()),
                train_accuracy=accuracy(net, x_train, y_train), test_accuracy_float=accuracy(net, x_test, y_test))
    return net, info


def export_detector(net, path=DETECTOR_PATH):
    """Script the uint8-input wrapper and write it atomically; returns the scripted module."""
    from ..metrics.compute import quantize
    from ..pickles import atomic_write_bytes
    x_train = load_digits_split(res=RESOLUTION)[0]
    net = net.eval()
    with torch.no_grad():
        # Statistics of what the detector will actually see: quantised images.
        feats = DigitsDetector(net)(quantize(x_train), return_features=True).to(torch.float64)
    mean, std = feats.mean(0).to(torch.float32), feats.std(0).to(torch.float32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but is the format metric detectors ship in.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(DigitsDetector(net, mean, std).eval())
        torch.jit.save(scripted, buf)
    atomic_write_bytes(path, buf.getvalue())
    return scripted


def export_reference_stats(path=REF_STATS_PATH, detector=None):
    """Write mean/covariance (float64) of the shipped detector's features of the 1,437
    uint8-quantised training images to `path` in EDM's .npz layout; returns the path.

    This is the reference of `--metrics fid` for the digits models ('fid-ref-digits-16x16'), so
    digits-FID needs neither scikit-learn nor the training images at run time.
    """
    from ..metrics.compute import ArraySource, compute_feature_stats, save_ref_stats
    from ..metrics.detectors import get_detector
    x_train = load_digits_split(res=RESOLUTION)[0]
    det = get_detector(DETECTOR_NAME if detector is None else detector, device="cpu")
    stats = compute_feature_stats(ArraySource(x_train.numpy()), det, batch_size=512)
    return save_ref_stats(os.fspath(path), stats, detector_name=DETECTOR_NAME)


def heldout_accuracy(module):
    """Held-out accuracy of an exported detector on the uint8-quantised test split."""
    from ..metrics.compute import quantize
    _, _, x_test, y_test = load_digits_split(res=RESOLUTION)
    return accuracy(module, quantize(x_test), y_test)


def _digits_factory(device):
    from ..metrics.detectors import load_detector_file
    if not DETECTOR_PATH.is_file():
        raise FileNotFoundError(f"the digits detector {DETECTOR_PATH.name} is missing from the package; "
                                f"rebuild it with `python -m gan_refine.zoo.digits_classifier`")
    return load_detector_file(os.fspath(DETECTOR_PATH), device=device, name=DETECTOR_NAME)


def register_digits_detector():
    """Make `get_detector('digits')` load the shipped TorchScript file.

    Idempotent; a 'digits' detector the user registered first is left in place.
    """
    from ..metrics.detectors import register_detector
    try:
        register_detector(DETECTOR_NAME, _digits_factory)
    except ValueError:
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train and export the digits feature network.")
    parser.add_argument("--seed", type=int, default=0, help="seed for init, shuffling and augmentation")
    parser.add_argument("--epochs", type=int, default=40, help="passes over the 1,437 training images")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=os.fspath(DETECTOR_PATH), help="TorchScript file to write")
    parser.add_argument("--info", default=None, help="also write the training figures as JSON here")
    parser.add_argument("--record", action="store_true", help="also record the figures in models/digits-models.json")
    parser.add_argument("--ref-stats-only", action="store_true",
                        help="only (re)write the FID reference statistics of the shipped detector "
                             "(models/fid-ref-digits-16x16.npz); a retrained detector needs them anew")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.ref_stats_only:
        print(export_reference_stats())
        return
    net, info = train_classifier(seed=args.seed, epochs=args.epochs)
    scripted = export_detector(net, args.out)
    if os.path.abspath(args.out) == os.path.abspath(DETECTOR_PATH):
        export_reference_stats()  # the reference statistics belong to this detector
    info["test_accuracy"] = heldout_accuracy(scripted)
    info["file_bytes"] = os.path.getsize(args.out)
    print(json.dumps(info))
    if args.info:
        Path(args.info).write_text(json.dumps(info, indent=2) + "\n")
    if args.record:
        from .train_teacher import record_models_json
        record_models_json("digits-detector", dict(file=os.path.basename(args.out), role="detector",
                                                   feature_dim=FEATURE_DIM, **info))


if __name__ == "__main__":
    main()
