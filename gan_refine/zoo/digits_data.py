"""The 8x8 digits set that ships inside scikit-learn, as images for our models.

1,797 grey-scale digits (values 0..16), 10 classes. We upsample them to `res` x `res` with
bilinear interpolation (align_corners=False), scale to [-1, 1] like GAN/EDM training data, and
split once with a fixed permutation: 1,437 training images and 360 held-out test images.
"""

import numpy as np
import torch

NUM_CLASSES = 10
SPLIT_SEED = 20261126   # fixed: every model and metric uses the same held-out images
NUM_TEST = 360


def load_digits_images(res=16):
    """All images as float32 [N, 1, res, res] in [-1, 1] and int64 labels [N]."""
    from sklearn.datasets import load_digits  # scikit-learn ships the data inside its wheel
    raw = load_digits()
    x = torch.as_tensor(raw.images, dtype=torch.float32)[:, None] / 16.0   # [N,1,8,8] in [0,1]
    if res != 8:
        x = torch.nn.functional.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
    x = (x * 2 - 1).clamp(-1, 1)
    y = torch.as_tensor(raw.target, dtype=torch.int64)
    return x, y


def load_digits_split(res=16):
    """(x_train, y_train, x_test, y_test) with a fixed held-out split of NUM_TEST images."""
    x, y = load_digits_images(res)
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(x))
    test, train = perm[:NUM_TEST], perm[NUM_TEST:]
    return x[train], y[train], x[test], y[test]


def export_split_zip(path, split="train", res=16):
    """Write one split as a StyleGAN/EDM dataset zip; returns the path.

    Greyscale PNGs `00000/img00000000.png`, `00000/img00000001.png`, ... (uint8 from
    (x * 127.5 + 128).clamp(0, 255), as StyleGAN/EDM save images) and a `dataset.json` with the
    integer class labels, stored uncompressed with fixed timestamps, so the same split gives the
    same bytes. The held-out images are written only for split="test". The zip is written to a
    temporary file in the same folder and renamed into place.
    """
    import io
    import json
    import os
    import tempfile
    import zipfile

    from PIL import Image

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    x_train, y_train, x_test, y_test = load_digits_split(res)
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    pixels = (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)[:, 0].numpy()   # [N, res, res]
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        labels = []
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
                for i, (img, label) in enumerate(zip(pixels, y.tolist())):
                    name = f"{i // 1000:05d}/img{i:08d}.png"
                    buf = io.BytesIO()
                    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="png")
                    zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
                    labels.append([name, int(label)])
                zf.writestr(zipfile.ZipInfo("dataset.json", date_time=(1980, 1, 1, 0, 0, 0)),
                            json.dumps({"labels": labels}))
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes the file private; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m gan_refine.zoo.digits_data",
        description="Export the digits training split as a StyleGAN/EDM dataset zip (for --data).")
    parser.add_argument("--export-train", metavar="OUT.zip", help="write the training split to OUT.zip")
    parser.add_argument("--res", type=int, default=16, help="image resolution (default 16)")
    args = parser.parse_args()
    if args.export_train is None:
        parser.print_help()
    else:
        out = export_split_zip(args.export_train, split="train", res=args.res)
        print(f"wrote the training split ({args.res}x{args.res}, greyscale, with labels) to {out}")
