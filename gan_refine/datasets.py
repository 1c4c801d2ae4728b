"""Real training images, for an adversarial term that compares them with generated ones.

`open_dataset(path)` reads one of
  * a folder of images (recursively; PNG, JPG, ...), with labels from a `dataset.json` at its root;
  * a StyleGAN2-ADA / EDM dataset zip as `dataset_tool.py` writes it: image files at any depth,
    and optionally a `dataset.json` at the zip root, `{"labels": [["00000/img00000000.png", 6],
    ...]}`, whose labels are null, integer class indices or lists of floats;
  * a `.npy` array, or a `.npz` with an `images` array and optionally an integer `labels` array;
    uint8 (0..255) or float ([-1, 1]), laid out [N, H, W], [N, H, W, C] or [N, C, H, W].

Images are ordered by their path (relative to the folder or zip root, with forward slashes),
and come back as float32 [n, C, H, W] in [-1, 1] (uint8 / 127.5 - 1, as StyleGAN and EDM read
training data); labels as float32 one-hot rows (or the stored float vectors).

The data is only read, never written. Image files are decoded on demand; the decoded uint8
images are kept in memory only when the whole set fits in `cache_bytes` (CACHE_BYTES by
default), so a large set streams from disk. `.npy` files are memory-mapped; `.npz` files are
loaded whole. Problems raise `DatasetError`, whose message is one line saying what to do.
"""

import io
import json
import os
import zipfile

import numpy as np
import torch

from .metrics.compute import IMAGE_EXTENSIONS, _list_images

__all__ = ["DatasetError", "ImageDataset", "open_dataset", "CACHE_BYTES"]

CACHE_BYTES = 512 << 20   # keep decoded images in memory when all of them take at most this
_GREY_MODES = ("1", "L", "LA")
_FLOAT_CHECK_BYTES = 256 << 20   # how much of a float array is checked for the [-1, 1] range
_KINDS = "a folder of images, a dataset .zip (as StyleGAN's dataset_tool.py writes) or a .npy/.npz array"
_TOOL = "StyleGAN's dataset_tool.py"


class DatasetError(ValueError):
    """A data set that cannot be used as it is; the message is one line saying what to do."""

    def __init__(self, message):
        super().__init__(str(message).replace("\r", " ").replace("\n", " "))


def open_dataset(path, *, resolution=None, channels=None, label_dim=None, max_items=None,
                 cache_bytes=None):
    """Open a folder, dataset zip or .npy/.npz file of images as an `ImageDataset`.

    resolution, channels: what the generator makes; a data set that differs is an error.
    label_dim: the generator's number of classes (None: take it from the labels; 0: an
        unconditional generator, labels are ignored; > 0: labels are required and checked).
    max_items: use only the first max_items images.
    cache_bytes: keep the decoded images in memory when they take at most this many bytes
        (default CACHE_BYTES; 0 never keeps them).
    """
    p = os.fspath(path)
    if label_dim is not None and int(label_dim) < 0:
        raise DatasetError(f"label_dim must be 0 or more, not {label_dim}")
    if max_items is not None and int(max_items) < 1:
        raise DatasetError(f"max_items must be at least 1, not {max_items}")
    opts = dict(resolution=None if resolution is None else int(resolution),
                channels=None if channels is None else int(channels),
                label_dim=None if label_dim is None else int(label_dim),
                max_items=None if max_items is None else int(max_items),
                cache_bytes=CACHE_BYTES if cache_bytes is None else int(cache_bytes))
    if not os.path.exists(p):
        raise DatasetError(f"{p} does not exist; give {_KINDS}")
    low = p.lower()
    if os.path.isdir(p):
        return FolderDataset(p, **opts)
    if low.endswith(".zip"):
        return ZipDataset(p, **opts)
    if low.endswith((".npy", ".npz")):
        return ArrayDataset(p, **opts)
    raise DatasetError(f"{p} is not a folder, .zip, .npy or .npz file; give {_KINDS}")


class ImageDataset:
    """Images [num_items, channels, resolution, resolution] with optional labels.

    Attributes: path, kind ('folder', 'zip', 'npy' or 'npz'), num_items, resolution, channels,
    label_dim (0 when unlabelled or when labels are ignored), has_labels.
    """

    kind = None

    def __len__(self):
        return self.num_items

    @property
    def has_labels(self):
        return self.label_dim > 0

    def __repr__(self):
        return (f"{type(self).__name__}({self.path!r}, {self.num_items} images, "
                f"{self.channels}x{self.resolution}x{self.resolution}, label_dim={self.label_dim})")

    def sample(self, n, generator=None, device=None):
        """n images drawn uniformly with replacement: indices torch.randint(len, (n,), generator)."""
        idx = torch.randint(self.num_items, (int(n),), generator=generator)
        return self.get(idx, device=device)

    def get(self, indices, device=None):
        """(images float32 [n, C, H, W] in [-1, 1], labels float32 [n, label_dim] or None)."""
        if torch.is_tensor(indices):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices).reshape(-1)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"indices must be integers, not {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_items):
            raise IndexError(f"index out of range [0, {self.num_items}): {idx.min()}..{idx.max()}")
        x = torch.from_numpy(self._read(idx))
        images = x.to(torch.float32) / 127.5 - 1 if x.dtype == torch.uint8 else x.to(torch.float32)
        labels = None
        if self._classes is not None:
            labels = torch.zeros(len(idx), self.label_dim, dtype=torch.float32)
            labels[torch.arange(len(idx)), torch.from_numpy(self._classes[idx])] = 1
        elif self._vectors is not None:
            labels = torch.from_numpy(self._vectors[idx])
        if device is not None:
            images = images.to(device)
            labels = None if labels is None else labels.to(device)
        return images, labels

    def _read(self, idx):
        """uint8 or float32 numpy [n, C, H, W] for int64 indices idx."""
        raise NotImplementedError

    # Shared checks, called by subclasses once shape and labels are known.

    def _check_size(self, width, height, what, resolution):
        # what: the subject of the message, with its verb ("a.png is", "the images are").
        if width != height:
            raise DatasetError(
                f"{self.path}: {what} {width}x{height} but generators make square images; crop or "
                f"resize the data set (for example with {_TOOL} --resolution={max(width, height)}x"
                f"{max(width, height)} --transform=center-crop)")
        if resolution is not None and width != resolution:
            raise DatasetError(
                f"{self.path}: the data set's images are {width}x{height} but the generator makes "
                f"{resolution}x{resolution} images; resize the data set (for example with {_TOOL} "
                f"--resolution={resolution}x{resolution})")

    def _check_channels(self, channels):
        if channels is not None and channels != self.channels:
            raise DatasetError(
                f"{self.path}: the data set's images are {_channel_words(self.channels)} but the "
                f"generator makes {_channel_words(channels)} images; convert the images to "
                f"{_channel_words(channels, short=True)} first")

    def _set_labels(self, labels, names, label_dim, max_items):
        """labels: None, int64 [N] or float32 [N, D] for all N images (names[i] for messages)."""
        self._classes = self._vectors = None
        self.label_dim = 0
        if labels is None:
            if label_dim:
                how = ("an .npz with an 'images' array and a 'labels' array of class indices"
                       if self.kind in ("npy", "npz")
                       else "a dataset.json with 'labels', as StyleGAN's dataset_tool writes")
                raise DatasetError(f"{self.path} has no class labels, but the generator is conditional "
                                   f"(label_dim={label_dim}) and needs class labels: {how}")
            return
        if label_dim == 0:
            return   # an unconditional generator: the labels are not used
        if labels.ndim == 1:
            dim = label_dim if label_dim is not None else int(labels.max()) + 1
            bad = np.flatnonzero((labels < 0) | (labels >= dim))
            if len(bad):
                i = int(bad[0])
                count = f"{len(bad)} of {len(labels)} labels are out of range"
                if label_dim is None:
                    raise DatasetError(f"{self.path}: the label of {names[i]} is {int(labels[i])}; class "
                                       f"indices must be 0 or more ({count}); fix the labels")
                raise DatasetError(f"{self.path}: the label of {names[i]} is {int(labels[i])}, outside "
                                   f"[0, {dim}) (the generator has {dim} classes; {count}); fix the labels "
                                   f"or use a generator with more classes")
            self._classes = np.ascontiguousarray(labels[:max_items], dtype=np.int64)
        else:
            dim = labels.shape[1]
            if label_dim is not None and dim != label_dim:
                raise DatasetError(f"{self.path}: the labels are vectors of {dim} numbers but the "
                                   f"generator takes {label_dim}; give labels that match the generator")
            self._vectors = np.ascontiguousarray(labels[:max_items], dtype=np.float32)
        self.label_dim = int(dim)


def _channel_words(c, short=False):
    if c == 1:
        return "greyscale" if short else "greyscale (1-channel)"
    if c == 3:
        return "RGB" if short else "RGB (3-channel)"
    return f"{c}-channel"


# ----------------------------------------------------------------------------
# Image files: a folder or a zip.

class _FileDataset(ImageDataset):
    """Images stored as files, decoded with pillow; subclasses say how to open a file."""

    def _setup(self, names, json_text, resolution, channels, label_dim, max_items, cache_bytes):
        if not names:
            raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {self.path}; give "
                               f"{_KINDS}")
        labels = _labels_from_json(json_text, names, self.path) if json_text is not None else None
        self._set_labels(labels, names, label_dim, max_items)
        self.names = names[:max_items]
        self.num_items = len(self.names)
        self._scan(resolution)
        self._check_channels(channels)
        item_bytes = self.channels * self.resolution ** 2
        self._cache_ok = self.num_items * item_bytes <= cache_bytes
        self._cache = self._have = None

    def _open_file(self, name):
        """A binary file object for the image `name` (relative path with forward slashes)."""
        raise NotImplementedError

    def _scan(self, resolution):
        # Headers only: pillow reads the size and mode without decoding the pixels.
        from PIL import Image
        first, grey = None, True
        for name in self.names:
            try:
                with self._open_file(name) as f, Image.open(f) as im:
                    size, mode = im.size, im.mode
            except DatasetError:
                raise
            except Exception as e:
                raise DatasetError(f"{self.path}: {name} is not a readable image ({e}); remove or "
                                   f"re-encode it") from e
            _check_mode(mode, name, self.path)
            if first is None:
                first = (name, size)
                self._check_size(size[0], size[1], f"{name} is", resolution)
            elif size != first[1]:
                w, h = first[1]
                raise DatasetError(
                    f"{self.path}: {name} is {size[0]}x{size[1]} but the first image ({first[0]}) is "
                    f"{w}x{h}; all images must have one size (resize them, for example with {_TOOL} "
                    f"--resolution={w}x{h})")
            grey = grey and mode in _GREY_MODES
        self.resolution = first[1][0]
        self.channels = 1 if grey else 3

    def _decode(self, i):
        from PIL import Image
        name = self.names[i]
        try:
            with self._open_file(name) as f:
                data = f.read()
            with Image.open(io.BytesIO(data)) as im:
                _check_mode(im.mode, name, self.path)
                a = np.asarray(im.convert("L" if self.channels == 1 else "RGB"), dtype=np.uint8)
        except DatasetError:
            raise
        except Exception as e:
            raise DatasetError(f"{self.path}: {name} is not a readable image ({e}); remove or "
                               f"re-encode it") from e
        if a.shape[:2] != (self.resolution, self.resolution):
            raise DatasetError(f"{self.path}: {name} is now {a.shape[1]}x{a.shape[0]}, not "
                               f"{self.resolution}x{self.resolution}; was the data set changed "
                               f"while in use? Open it again")
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    def _read(self, idx):
        shape = (self.channels, self.resolution, self.resolution)
        if self._cache_ok:
            if self._cache is None:
                self._cache = np.empty((self.num_items,) + shape, dtype=np.uint8)
                self._have = np.zeros(self.num_items, dtype=bool)
            for i in np.unique(idx):
                if not self._have[i]:
                    self._cache[i] = self._decode(int(i))
                    self._have[i] = True
            return self._cache[idx]
        uniq, inverse = np.unique(idx, return_inverse=True)
        out = np.empty((len(uniq),) + shape, dtype=np.uint8)
        for k, i in enumerate(uniq):
            out[k] = self._decode(int(i))
        return out[inverse.reshape(-1)]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = state["_have"] = None   # rebuilt on demand
        return state


def _check_mode(mode, name, where):
    if mode.startswith(("I", "F")):
        raise DatasetError(f"{where}: {name} has {mode!r} pixels (16-bit or float); convert the images "
                           f"to 8-bit greyscale or RGB first")


class FolderDataset(_FileDataset):
    """Image files under a folder, with labels from `dataset.json` at the folder's root."""

    kind = "folder"

    def __init__(self, path, *, resolution=None, channels=None, label_dim=None, max_items=None,
                 cache_bytes=CACHE_BYTES):
        self.path = os.fspath(path)
        names = sorted(os.path.relpath(f, self.path).replace(os.sep, "/")
                       for f in _list_images(self.path))
        json_path = os.path.join(self.path, "dataset.json")
        json_text = None
        if os.path.isfile(json_path):
            with open(json_path, "rb") as f:
                json_text = f.read()
        self._setup(names, json_text, resolution, channels, label_dim, max_items, cache_bytes)

    def _open_file(self, name):
        return open(os.path.join(self.path, *name.split("/")), "rb")


class ZipDataset(_FileDataset):
    """Image files inside a zip, with labels from `dataset.json` at the zip root.

    The zip is opened on first use in each process (it is reopened after a fork, and left out
    when the object is pickled).
    """

    kind = "zip"

    def __init__(self, path, *, resolution=None, channels=None, label_dim=None, max_items=None,
                 cache_bytes=CACHE_BYTES):
        self.path = os.fspath(path)
        self._zip = self._zip_pid = None
        if not os.path.isfile(self.path):
            raise DatasetError(f"{self.path} is not a file; give {_KINDS}")
        try:
            zf = self._get_zip()
            all_names = zf.namelist()
            names = sorted(n for n in all_names
                           if n.lower().endswith(IMAGE_EXTENSIONS) and not n.endswith("/")
                           and not n.rsplit("/", 1)[-1].startswith(".") and not n.startswith("__MACOSX/"))
            try:
                json_text = zf.read("dataset.json") if "dataset.json" in all_names else None
            except Exception as e:
                raise DatasetError(f"{self.path}: dataset.json cannot be read ({e}); re-create the "
                                   f"zip, for example with {_TOOL}") from e
            self._setup(names, json_text, resolution, channels, label_dim, max_items, cache_bytes)
        except BaseException:
            self.close()
            raise

    def _get_zip(self):
        if self._zip is None or self._zip_pid != os.getpid():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise DatasetError(f"{self.path} is not a readable zip file ({e}); re-create it, for "
                                   f"example with {_TOOL}") from e
            self._zip_pid = os.getpid()
        return self._zip

    def _open_file(self, name):
        return self._get_zip().open(name)

    def close(self):
        """Close the zip (it is opened again when needed)."""
        if self._zip is not None and self._zip_pid == os.getpid():
            self._zip.close()
        self._zip = self._zip_pid = None

    def __getstate__(self):
        state = super().__getstate__()
        state["_zip"] = state["_zip_pid"] = None
        return state


def _labels_from_json(text, names, where):
    """Labels of `names` from dataset.json text: None, int64 [N] or float32 [N, D]."""
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise DatasetError(f"{where}: dataset.json is not valid JSON ({e}); fix or remove it") from e
    if not isinstance(meta, dict):
        raise DatasetError(f"{where}: dataset.json must hold an object like {{\"labels\": [[file, label], "
                           f"...]}}; fix or remove it")
    entries = meta.get("labels")
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise DatasetError(f"{where}: 'labels' in dataset.json must be a list of [file, label] pairs")
    table = {}
    for e in entries:
        if not (isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], str)):
            raise DatasetError(f"{where}: dataset.json has the entry {str(e)[:80]} in 'labels'; each "
                               f"entry must be a [file, label] pair")
        table[e[0].replace("\\", "/")] = e[1]
    present = set(names)
    missing = [n for n in table if n not in present]
    if missing:
        raise DatasetError(f"{where}: dataset.json names files that are not in the data set ({len(missing)} "
                           f"of them; first: {missing[0]}); re-create the dataset.json for these images")
    unlabelled = [n for n in names if n not in table]
    values = [table.get(n) for n in names]
    if all(v is None for v in values):
        return None
    if unlabelled or any(v is None for v in values):
        first = unlabelled[0] if unlabelled else names[values.index(None)]
        raise DatasetError(f"{where}: dataset.json gives no label for {first}; give every image a "
                           f"label (or set \"labels\": null)")
    if all(_is_int(v) for v in values):
        return np.array([int(v) for v in values], dtype=np.int64)
    if all(isinstance(v, list) and all(_is_number(u) for u in v) for v in values):
        dims = {len(v) for v in values}
        if len(dims) == 1 and 0 not in dims:
            return np.array(values, dtype=np.float32)
    raise DatasetError(f"{where}: labels in dataset.json must all be integer class indices or all be "
                       f"lists of numbers of one length; fix the labels")


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v):
    return _is_number(v) and float(v).is_integer()


# ----------------------------------------------------------------------------
# Arrays: .npy (memory-mapped) or .npz (loaded whole).

class ArrayDataset(ImageDataset):
    """Images from a .npy array or an .npz with `images` (and optionally `labels`)."""

    def __init__(self, path, *, resolution=None, channels=None, label_dim=None, max_items=None,
                 cache_bytes=CACHE_BYTES):
        self.path = os.fspath(path)
        self.kind = "npz" if self.path.lower().endswith(".npz") else "npy"
        labels = None
        if self.kind == "npy":
            a = self._load_npy()
        else:
            a, labels = self._load_npz()
        if a.ndim == 3:
            layout, (n, h, w), c = "NHW", a.shape, 1
        elif a.ndim == 4 and a.shape[1] in (1, 3):
            layout, (n, c, h, w) = "NCHW", a.shape
        elif a.ndim == 4 and a.shape[3] in (1, 3):
            layout, (n, h, w, c) = "NHWC", a.shape
        else:
            raise DatasetError(f"{self.path}: the image array has shape {list(a.shape)}; expected [N, H, W], "
                               f"[N, H, W, C] or [N, C, H, W] with C = 1 or 3")
        if n == 0:
            raise DatasetError(f"no images in {self.path} (the array is empty); give {_KINDS}")
        if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
            raise DatasetError(f"{self.path}: the image array has dtype {a.dtype}; save it as uint8 "
                               f"(0..255) or float ([-1, 1])")
        if labels is not None:
            labels = _labels_from_array(labels, n, self.path)
        self._layout = layout
        self._set_labels(labels, [f"image {i}" for i in range(n)] if labels is not None else None,
                         label_dim, max_items)
        self._check_size(w, h, "the images are", resolution)
        self.resolution, self.channels = h, c
        self._check_channels(channels)
        self.num_items = n if max_items is None else min(n, max_items)
        if a.dtype != np.uint8:
            _check_float_range(a[:self.num_items], self.path)
        if self.kind == "npz" and self.num_items < n:
            a = a[:self.num_items].copy()
        self._array = a

    def _load_npy(self):
        with open(self.path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise DatasetError(f"{self.path} is not a readable .npy array (it has no .npy header); "
                                   f"save it with numpy.save")
        try:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise DatasetError(f"{self.path} is not a readable .npy array ({e}); save it with "
                               f"numpy.save") from e

    def _load_npz(self):
        if not zipfile.is_zipfile(self.path):
            raise DatasetError(f"{self.path} is not a readable .npz file (it is not a zip archive); save "
                               f"it with numpy.savez")
        try:
            with np.load(self.path, allow_pickle=False) as z:
                keys = list(z.files)
                key = "images" if "images" in keys else None
                others = [k for k in keys if k != "labels"]
                if key is None and len(others) == 1:
                    key = others[0]
                if key is None:
                    raise DatasetError(f"{self.path} holds the arrays {keys}; name the images array "
                                       f"'images' (and the class labels 'labels')")
                return z[key], (z["labels"] if "labels" in keys else None)
        except DatasetError:
            raise
        except Exception as e:
            raise DatasetError(f"{self.path} is not a readable .npz file ({e}); save it with "
                               f"numpy.savez") from e

    def _get_array(self):
        if self._array is None:   # a .npy after unpickling: map it again
            self._array = self._load_npy()
        return self._array

    def _read(self, idx):
        x = self._get_array()[idx]
        if self._layout == "NHW":
            x = x[:, None]
        elif self._layout == "NHWC":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.uint8 if x.dtype == np.uint8 else np.float32)

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.kind == "npy":
            state["_array"] = None   # memory-mapped: map the file again instead of copying it
        return state


def _labels_from_array(labels, n, where):
    labels = np.asarray(labels)
    if labels.ndim == 0 or len(labels) != n:
        raise DatasetError(f"{where}: 'labels' has shape {list(labels.shape)} but there are {n} images; "
                           f"give one label per image")
    if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
        return labels.astype(np.int64)
    if labels.ndim == 1 and np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
        return labels.astype(np.int64)
    if labels.ndim == 2 and np.issubdtype(labels.dtype, np.number) and labels.shape[1] > 0:
        return labels.astype(np.float32)
    raise DatasetError(f"{where}: 'labels' must be integer class indices [N] (or float vectors [N, D]), "
                       f"not {labels.dtype} {list(labels.shape)}")


def _check_float_range(a, where):
    """Float images must be finite and in [-1, 1]; checks the first _FLOAT_CHECK_BYTES."""
    per_item = max(1, a[:1].nbytes)
    count = max(1, min(len(a), _FLOAT_CHECK_BYTES // per_item))
    step = max(1, (64 << 20) // per_item)
    lo, hi = np.inf, -np.inf
    for start in range(0, count, step):
        chunk = np.asarray(a[start:min(count, start + step)])
        if not np.isfinite(chunk).all():
            raise DatasetError(f"{where}: the float image array holds NaN or infinite values; fix the "
                               f"data")
        lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    if lo < -1.001 or hi > 1.001:
        raise DatasetError(f"{where}: float images must be in [-1, 1] but the values span "
                           f"[{lo:g}, {hi:g}]; scale them (for 0..255 data: x / 127.5 - 1) or save "
                           f"uint8 0..255")
