"""gan_refine.datasets: real images from folders, dataset zips and arrays.

Every expectation is built by the test from its own arrays (written with PIL, numpy and
zipfile), never read back through the code under test.
"""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from gan_refine.datasets import DatasetError, open_dataset


def _scaled(u8):
    """The StyleGAN/EDM reading of uint8 images, in float32 arithmetic."""
    return u8.astype(np.float32) / np.float32(127.5) - np.float32(1)


def _png(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="png")
    return buf.getvalue()


def _images(n, res=8, channels=3, seed=0):
    """uint8 images, [n, res, res] when greyscale, [n, res, res, 3] when RGB."""
    shape = (n, res, res) if channels == 1 else (n, res, res, 3)
    return np.random.RandomState(seed).randint(0, 256, size=shape, dtype=np.uint8)


def _nchw(a):
    return a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2)


def _write_zip(path, files, labels=None, extra=None):
    """files: {name: uint8 array}; labels: the dataset.json 'labels' value (None: no json)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, a in files.items():
            zf.writestr(name, _png(a))
        if labels is not None:
            zf.writestr("dataset.json", json.dumps({"labels": labels}))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return str(path)


def _labelled_zip(tmp_path, n=6, num_classes=5, channels=3, res=8):
    imgs = _images(n, res, channels)
    cls = np.random.RandomState(1).randint(0, num_classes, size=n)
    cls[0] = num_classes - 1   # so that max + 1 == num_classes
    # Names across two folders, written out of order: the data set orders them by path.
    names = [f"{i // 4:05d}/img{i:08d}.png" for i in range(n)]
    order = list(reversed(range(n)))
    files = {names[i]: imgs[i] for i in order}
    path = _write_zip(tmp_path / "data.zip", files, labels=[[names[i], int(cls[i])] for i in order])
    return path, imgs, cls


def _one_line(err):
    msg = str(err.value)
    assert "\n" not in msg and "\r" not in msg, msg
    return msg


# ----------------------------------------------------------------------------
# Round trips against the test's own arrays.

@pytest.mark.parametrize("cache_bytes", [None, 0])
def test_zip_round_trip(tmp_path, cache_bytes):
    path, imgs, cls = _labelled_zip(tmp_path)
    ds = open_dataset(path, cache_bytes=cache_bytes)
    assert (len(ds), ds.num_items, ds.resolution, ds.channels) == (6, 6, 8, 3)
    assert ds.label_dim == 5 and ds.has_labels and ds.kind == "zip"
    x, c = ds.get(list(range(6)))
    assert x.dtype == torch.float32 and x.shape == (6, 3, 8, 8)
    np.testing.assert_array_equal(x.numpy(), _scaled(_nchw(imgs)))
    np.testing.assert_array_equal(c.numpy(), np.eye(5, dtype=np.float32)[cls])
    # The generator's label_dim wins over max + 1.
    ds7 = open_dataset(path, label_dim=7, resolution=8, channels=3, cache_bytes=cache_bytes)
    _, c7 = ds7.get(np.arange(6))
    np.testing.assert_array_equal(c7.numpy(), np.eye(7, dtype=np.float32)[cls])
    # label_dim=0 (an unconditional generator) ignores the labels.
    ds0 = open_dataset(path, label_dim=0, cache_bytes=cache_bytes)
    assert ds0.label_dim == 0 and not ds0.has_labels and ds0.get([0])[1] is None


def test_zip_float_vector_labels_and_no_labels(tmp_path):
    imgs = _images(3, channels=1)
    vec = np.random.RandomState(2).randn(3, 4).astype(np.float32)
    files = {f"a/{i}.png": imgs[i] for i in range(3)}
    path = _write_zip(tmp_path / "v.zip", files, labels=[[f"a/{i}.png", vec[i].tolist()] for i in range(3)])
    ds = open_dataset(path)
    assert ds.channels == 1 and ds.label_dim == 4
    x, c = ds.get([2, 0, 2])
    np.testing.assert_array_equal(x.numpy(), _scaled(imgs[[2, 0, 2]][:, None]))
    np.testing.assert_array_equal(c.numpy(), vec[[2, 0, 2]])

    plain = _write_zip(tmp_path / "plain.zip", files)
    nulls = _write_zip(tmp_path / "nulls.zip", files, extra={"dataset.json": '{"labels": null}'})
    for p in (plain, nulls):
        ds = open_dataset(p)
        assert ds.label_dim == 0 and not ds.has_labels
        x, c = ds.get([1])
        assert c is None
        np.testing.assert_array_equal(x.numpy(), _scaled(imgs[[1]][:, None]))


def test_folder_round_trip_with_dataset_json(tmp_path):
    imgs = _images(5, res=4, channels=1, seed=3)
    # Globally sorted by relative path: "a.png" < "sub/b.png" < "z.png" (not files-then-folders).
    names = ["z.png", "a.png", "sub/b.png", "sub/deeper/c.jpg.png", "m.png"]
    for name, a in zip(names, imgs):
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        Image.fromarray(a).save(tmp_path / name)
    cls = [3, 1, 0, 2, 1]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [[n, c] for n, c in zip(names, cls)]}))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = open_dataset(tmp_path, resolution=4, channels=1, label_dim=4)
    assert ds.kind == "folder" and (len(ds), ds.channels, ds.resolution, ds.label_dim) == (5, 1, 4, 4)
    order = sorted(range(5), key=lambda i: names[i])
    x, c = ds.get(range(5))
    np.testing.assert_array_equal(x.numpy(), _scaled(imgs[order][:, None]))
    np.testing.assert_array_equal(c.numpy(), np.eye(4, dtype=np.float32)[np.array(cls)[order]])


def test_folder_mixed_grey_and_rgb_reads_rgb(tmp_path):
    grey = _images(1, res=4, channels=1)[0]
    rgb = _images(1, res=4, channels=3)[0]
    Image.fromarray(grey).save(tmp_path / "0.png")
    Image.fromarray(rgb).save(tmp_path / "1.png")
    ds = open_dataset(tmp_path)
    assert ds.channels == 3 and ds.label_dim == 0
    x, c = ds.get([0, 1])
    assert c is None
    np.testing.assert_array_equal(x.numpy()[0], _scaled(np.stack([grey] * 3)))
    np.testing.assert_array_equal(x.numpy()[1], _scaled(rgb.transpose(2, 0, 1)))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW"])
def test_npz_uint8_with_labels(tmp_path, layout):
    channels = 1 if layout == "NHW" else 3
    imgs = _images(7, res=4, channels=channels, seed=4)          # NHW or NHWC
    expect = _scaled(_nchw(imgs))
    stored = imgs.transpose(0, 3, 1, 2) if layout == "NCHW" else imgs
    cls = np.array([0, 2, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", images=stored, labels=cls)
    ds = open_dataset(tmp_path / "d.npz", resolution=4, channels=channels)
    assert ds.kind == "npz" and (len(ds), ds.channels, ds.label_dim) == (7, channels, 3)
    x, c = ds.get(np.arange(7))
    np.testing.assert_array_equal(x.numpy(), expect)
    np.testing.assert_array_equal(c.numpy(), np.eye(3, dtype=np.float32)[cls])


def test_npy_float_and_uint8(tmp_path):
    rs = np.random.RandomState(5)
    f = rs.uniform(-1, 1, size=(6, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "f.npy", f)
    ds = open_dataset(tmp_path / "f.npy", resolution=4, channels=3, label_dim=0)
    x, c = ds.get([5, 1])
    assert c is None and ds.kind == "npy"
    np.testing.assert_array_equal(x.numpy(), f[[5, 1]])   # float data is used as it is
    f64 = rs.uniform(-1, 1, size=(3, 4, 4)).astype(np.float64)   # [N, H, W] greyscale
    np.save(tmp_path / "g.npy", f64)
    np.testing.assert_array_equal(open_dataset(tmp_path / "g.npy").get([0, 1, 2])[0].numpy(),
                                  f64[:, None].astype(np.float32))
    u = _images(4, res=4, channels=3, seed=6)
    np.save(tmp_path / "u.npy", u)
    np.testing.assert_array_equal(open_dataset(tmp_path / "u.npy").get(range(4))[0].numpy(),
                                  _scaled(u.transpose(0, 3, 1, 2)))


def test_max_items(tmp_path):
    path, imgs, cls = _labelled_zip(tmp_path)
    ds = open_dataset(path, max_items=2)
    assert len(ds) == 2 and ds.label_dim == 5
    x, c = ds.get([0, 1])
    np.testing.assert_array_equal(x.numpy(), _scaled(_nchw(imgs[:2])))
    np.testing.assert_array_equal(c.numpy(), np.eye(5, dtype=np.float32)[cls[:2]])
    with pytest.raises(IndexError):
        ds.get([2])
    np.savez(tmp_path / "d.npz", images=imgs)
    assert len(open_dataset(tmp_path / "d.npz", max_items=3)) == 3


# ----------------------------------------------------------------------------
# Sampling.

@pytest.mark.parametrize("cache_bytes", [None, 0])
def test_sample_matches_randint(tmp_path, cache_bytes):
    path, imgs, cls = _labelled_zip(tmp_path, n=6)
    ds = open_dataset(path, cache_bytes=cache_bytes)
    for seed in (0, 123):
        idx = torch.randint(6, (9,), generator=torch.Generator().manual_seed(seed)).numpy()
        x, c = ds.sample(9, generator=torch.Generator().manual_seed(seed))
        np.testing.assert_array_equal(x.numpy(), _scaled(_nchw(imgs))[idx])
        np.testing.assert_array_equal(c.numpy(), np.eye(5, dtype=np.float32)[cls[idx]])
    # One generator, two calls: the second call continues the stream.
    g, ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    ds.sample(3, generator=g)
    torch.randint(6, (3,), generator=ref)
    idx = torch.randint(6, (4,), generator=ref).numpy()
    np.testing.assert_array_equal(ds.sample(4, generator=g)[0].numpy(), _scaled(_nchw(imgs))[idx])


def test_sample_device_argument(tmp_path):
    path, imgs, _ = _labelled_zip(tmp_path)
    x, c = open_dataset(path).sample(2, generator=torch.Generator().manual_seed(0), device="cpu")
    assert x.device.type == "cpu" and c.device.type == "cpu" and c.shape == (2, 5)


# ----------------------------------------------------------------------------
# Lazy reading: no cache, pickling, fork.

def test_no_cache_matches_cache_and_keeps_nothing(tmp_path):
    path, imgs, cls = _labelled_zip(tmp_path, n=10)
    cached, lazy = open_dataset(path), open_dataset(path, cache_bytes=0)
    idx = [9, 0, 3, 3, 7]
    for a, b in zip(cached.get(idx), lazy.get(idx)):
        assert torch.equal(a, b)
    assert cached._cache is not None and lazy._cache is None
    np.testing.assert_array_equal(lazy.get(idx)[0].numpy(), _scaled(_nchw(imgs))[idx])
    # Too big for the cache: streams.
    assert open_dataset(path, cache_bytes=10 * 3 * 8 * 8 - 1)._cache_ok is False
    assert open_dataset(path, cache_bytes=10 * 3 * 8 * 8)._cache_ok is True


@pytest.mark.parametrize("kind", ["zip", "folder", "npy", "npz"])
def test_pickle_round_trip_still_samples(tmp_path, kind):
    imgs = _images(5, res=4, channels=3, seed=8)
    if kind == "zip":
        path = _write_zip(tmp_path / "d.zip", {f"{i}.png": imgs[i] for i in range(5)})
    elif kind == "folder":
        path = tmp_path / "folder"
        path.mkdir()
        for i in range(5):
            Image.fromarray(imgs[i]).save(path / f"{i}.png")
    else:
        path = tmp_path / f"d.{kind}"
        (np.save if kind == "npy" else np.savez)(path, imgs)
    ds = open_dataset(path)
    ds.get([0])   # fills the cache and opens the zip
    ds2 = pickle.loads(pickle.dumps(ds))
    # Neither the decoded cache, an open zip nor a memory-mapped .npy travels in the pickle.
    assert getattr(ds2, "_cache", None) is None and getattr(ds2, "_zip", None) is None
    assert kind != "npy" or ds2._array is None
    idx = torch.randint(5, (6,), generator=torch.Generator().manual_seed(1)).numpy()
    x, _ = ds2.sample(6, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(x.numpy(), _scaled(imgs.transpose(0, 3, 1, 2))[idx])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_zip_after_fork_reopens(tmp_path):
    path, imgs, _ = _labelled_zip(tmp_path, n=6)
    ds = open_dataset(path, cache_bytes=0)
    ds.get([0])   # the parent's zip is open
    parent_zip = ds._zip
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: read, send the pixels back, exit without running pytest's teardown
        code = 1
        try:
            os.close(r)
            x, _ = ds.get([5, 2])
            ok = ds._zip is not parent_zip and ds._zip_pid == os.getpid()
            os.write(w, bytes([ok]) + x.numpy().tobytes())
            code = 0
        finally:
            os.close(w)
            os._exit(code)
    os.close(w)
    data = b""
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert data[0] == 1
    got = np.frombuffer(data[1:], dtype=np.float32).reshape(2, 3, 8, 8)
    np.testing.assert_array_equal(got, _scaled(_nchw(imgs))[[5, 2]])
    # The parent's zip is still usable after the child read from its own.
    np.testing.assert_array_equal(ds.get([1])[0].numpy(), _scaled(_nchw(imgs))[[1]])


# ----------------------------------------------------------------------------
# Errors: DatasetError, one line, saying what is wrong and what to do.

def _raises(words, path, **kw):
    with pytest.raises(DatasetError) as err:
        open_dataset(path, **kw)
    msg = _one_line(err)
    for word in words:
        assert word in msg, (word, msg)
    return msg


def test_error_missing_and_unknown_paths(tmp_path):
    _raises(["does not exist", "folder", ".zip", ".npy"], tmp_path / "nope.zip")
    (tmp_path / "x.tar").write_bytes(b"abc")
    _raises(["is not a folder, .zip, .npy or .npz"], tmp_path / "x.tar")
    (tmp_path / "bad.zip").write_bytes(b"this is not a zip file at all")
    _raises(["not a readable zip", "dataset_tool"], tmp_path / "bad.zip")
    good = _labelled_zip(tmp_path)[0]
    with open(good, "rb") as f:
        head = f.read(200)
    (tmp_path / "truncated.zip").write_bytes(head)
    _raises(["not a readable zip"], tmp_path / "truncated.zip")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    _raises(["not a readable .npy"], tmp_path / "bad.npy")
    (tmp_path / "bad.npz").write_bytes(b"not numpy")
    _raises(["not a readable .npz"], tmp_path / "bad.npz")


def test_error_no_images(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    _raises(["no images", str(empty)], empty)
    _raises(["no images"], _write_zip(tmp_path / "e.zip", {}, extra={"readme.txt": "x"}))
    np.save(tmp_path / "e.npy", np.zeros((0, 4, 4), np.uint8))
    _raises(["no images"], tmp_path / "e.npy")


def test_error_corrupt_image_in_zip(tmp_path):
    imgs = _images(2)
    path = _write_zip(tmp_path / "c.zip", {"0.png": imgs[0]}, extra={"1.png": b"garbage"})
    _raises(["1.png", "not a readable image"], path)


def test_error_mixed_sizes_names_the_file(tmp_path):
    a, b = _images(1, res=8)[0], _images(1, res=4)[0]
    path = _write_zip(tmp_path / "m.zip", {"a.png": a, "b.png": a, "c.png": b, "d.png": b})
    msg = _raises(["c.png", "4x4", "8x8", "a.png", "one size"], path)
    assert "d.png" not in msg
    folder = tmp_path / "f"
    folder.mkdir()
    Image.fromarray(a).save(folder / "a.png")
    Image.fromarray(b).save(folder / "b.png")
    _raises(["b.png", "one size"], folder)


def test_error_non_square(tmp_path):
    path = _write_zip(tmp_path / "r.zip", {"a.png": np.zeros((4, 8), np.uint8)})
    _raises(["8x4", "square"], path)
    np.save(tmp_path / "r.npy", np.zeros((2, 4, 8), np.uint8))
    _raises(["8x4", "square"], tmp_path / "r.npy")


def test_error_resolution_and_channels(tmp_path):
    path = _write_zip(tmp_path / "g.zip", {f"{i}.png": a for i, a in enumerate(_images(2, res=32, channels=1))})
    _raises(["the data set's images are 32x32 but the generator makes 16x16 images",
             "dataset_tool.py --resolution=16x16"], path, resolution=16)
    _raises(["greyscale", "RGB", "convert"], path, channels=3)    # never converted silently
    assert open_dataset(path, resolution=32, channels=1).channels == 1
    rgb = _write_zip(tmp_path / "c.zip", {"0.png": _images(1, res=8)[0]})
    _raises(["RGB", "greyscale", "convert"], rgb, channels=1)
    np.save(tmp_path / "a.npy", _images(2, res=8, channels=1))
    _raises(["8x8", "16x16"], tmp_path / "a.npy", resolution=16)
    _raises(["greyscale", "RGB"], tmp_path / "a.npy", channels=3)


def test_error_conditional_needs_labels(tmp_path):
    files = {f"{i}.png": a for i, a in enumerate(_images(2))}
    msg = _raises(["needs class labels", "dataset.json", "'labels'", "dataset_tool"],
                  _write_zip(tmp_path / "n.zip", files), label_dim=10)
    assert "label_dim=10" in msg
    _raises(["needs class labels"], _write_zip(tmp_path / "nul.zip", files,
                                               extra={"dataset.json": '{"labels": null}'}), label_dim=10)
    np.save(tmp_path / "n.npy", _images(2))
    _raises(["needs class labels", "'labels'"], tmp_path / "n.npy", label_dim=10)


def test_error_labels_out_of_range(tmp_path):
    path, _, cls = _labelled_zip(tmp_path, num_classes=5)
    msg = _raises(["outside [0, 3)", "3 classes"], path, label_dim=3)
    first_bad = sorted(f"{i // 4:05d}/img{i:08d}.png" for i in range(6) if cls[i] >= 3)[0]
    assert first_bad in msg and f"{int((cls >= 3).sum())} of 6 labels" in msg
    neg = _write_zip(tmp_path / "neg.zip", {"0.png": _images(1)[0]}, labels=[["0.png", -1]])
    _raises(["-1", "0 or more"], neg)
    np.savez(tmp_path / "l.npz", images=_images(3), labels=np.array([0, 1, 9]))
    _raises(["image 2", "9", "outside [0, 4)"], tmp_path / "l.npz", label_dim=4)
    np.savez(tmp_path / "short.npz", images=_images(3), labels=np.array([0, 1]))
    _raises(["one label per image"], tmp_path / "short.npz")
    vec = _write_zip(tmp_path / "vec.zip", {"0.png": _images(1)[0]}, labels=[["0.png", [0.5, 0.5]]])
    _raises(["2 numbers", "takes 3"], vec, label_dim=3)


def test_error_dataset_json_problems(tmp_path):
    files = {f"{i}.png": a for i, a in enumerate(_images(2))}
    extra = _write_zip(tmp_path / "x.zip", files, labels=[["0.png", 0], ["1.png", 1], ["gone.png", 0]])
    _raises(["gone.png", "not in the data set", "dataset.json"], extra)
    missing = _write_zip(tmp_path / "m.zip", files, labels=[["0.png", 0]])
    _raises(["no label for 1.png"], missing)
    mixed = _write_zip(tmp_path / "mix.zip", files, labels=[["0.png", 0], ["1.png", [0.5]]])
    _raises(["integer class indices"], mixed)
    broken = _write_zip(tmp_path / "b.zip", files, extra={"dataset.json": "{not json"})
    _raises(["not valid JSON"], broken)
    folder = tmp_path / "f"
    folder.mkdir()
    Image.fromarray(_images(1)[0]).save(folder / "a.png")
    (folder / "dataset.json").write_text(json.dumps({"labels": [["a.png", 0], ["sub/b.png", 1]]}))
    _raises(["sub/b.png", "not in the data set"], folder)


def test_error_array_problems(tmp_path):
    np.save(tmp_path / "f.npy", np.full((2, 4, 4), 255.0, np.float32))
    _raises(["[-1, 1]", "255", "x / 127.5 - 1"], tmp_path / "f.npy")
    np.save(tmp_path / "nan.npy", np.full((2, 4, 4), np.nan, np.float32))
    _raises(["NaN"], tmp_path / "nan.npy")
    np.save(tmp_path / "i.npy", np.zeros((2, 4, 4), np.int64))
    _raises(["int64", "uint8"], tmp_path / "i.npy")
    np.save(tmp_path / "rgba.npy", np.zeros((2, 4, 4, 4), np.uint8))
    _raises(["[2, 4, 4, 4]", "C = 1 or 3"], tmp_path / "rgba.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 4, 4), np.uint8), b=np.zeros((2, 4, 4), np.uint8))
    _raises(["'images'"], tmp_path / "two.npz")


# ----------------------------------------------------------------------------
# The digits training split as a dataset zip.

def test_export_split_zip_digits_train(tmp_path):
    from gan_refine.zoo.digits_data import export_split_zip, load_digits_split
    x_train, y_train, x_test, _ = load_digits_split(16)
    out = tmp_path / "digits.zip"
    assert export_split_zip(out) == str(out)
    assert [p.name for p in tmp_path.iterdir()] == ["digits.zip"]   # no temporary file left
    expect = (x_train * 127.5 + 128).clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    with zipfile.ZipFile(out) as zf:
        pngs = sorted(n for n in zf.namelist() if n.endswith(".png"))
        assert len(pngs) == len(x_train) == 1437
        assert pngs[0] == "00000/img00000000.png" and pngs[-1] == "00001/img00001436.png"
        meta = json.loads(zf.read("dataset.json"))
        assert [name for name, _ in meta["labels"]] == pngs
        assert [lab for _, lab in meta["labels"]] == y_train.tolist()
        for i, name in enumerate(pngs):
            with Image.open(io.BytesIO(zf.read(name))) as im:
                assert im.mode == "L"
                np.testing.assert_array_equal(np.asarray(im), expect[i])
    # The module reads it back as the same images and labels.
    ds = open_dataset(out, resolution=16, channels=1, label_dim=10)
    x, c = ds.get(range(len(ds)))
    np.testing.assert_array_equal(x.numpy(), _scaled(expect[:, None]))
    np.testing.assert_array_equal(c.numpy(), np.eye(10, dtype=np.float32)[y_train.numpy()])
    # The same call gives the same bytes; the test split differs and needs asking for.
    again = export_split_zip(tmp_path / "again.zip")
    assert open(again, "rb").read() == out.read_bytes()
    test_zip = export_split_zip(tmp_path / "test.zip", split="test")
    with zipfile.ZipFile(test_zip) as zf:
        assert sum(n.endswith(".png") for n in zf.namelist()) == len(x_test) == 360
    with pytest.raises(ValueError):
        export_split_zip(tmp_path / "all.zip", split="all")


def test_digits_data_cli_exports_train(tmp_path, monkeypatch):
    import runpy
    import sys
    import warnings
    from gan_refine.zoo.digits_data import export_split_zip
    out = tmp_path / "cli.zip"
    monkeypatch.setattr(sys, "argv", ["digits_data", "--export-train", str(out)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # runpy: module already imported
        runpy.run_module("gan_refine.zoo.digits_data", run_name="__main__")
    assert out.read_bytes() == open(export_split_zip(tmp_path / "ref.zip"), "rb").read()


def test_error_16_bit_png(tmp_path):
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")   # pillow reads 16-bit PNGs as 'I;16' or 'I'
    _raises(["deep.png", "16-bit", "8-bit"], tmp_path)


def test_empty_sample_and_bad_indices(tmp_path):
    path, _, _ = _labelled_zip(tmp_path)
    ds = open_dataset(path)
    x, c = ds.sample(0)
    assert x.shape == (0, 3, 8, 8) and c.shape == (0, 5)
    with pytest.raises(IndexError):
        ds.get([-1])
    with pytest.raises(TypeError):
        ds.get([0.5])
