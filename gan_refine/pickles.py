"""Load and save network pickles in the StyleGAN2-ADA, StyleGAN3 and EDM layouts.

Loading a network pickle EXECUTES the Python source stored inside it (that is how these files
carry their architecture). Only load pickles you trust; gan_refine never loads one that you did
not name yourself.

`load_network_pkl` returns the dict exactly as upstream code sees it
(StyleGAN2-ADA: training_set_kwargs, G, D, G_ema, augment_pipe; StyleGAN3: G, D, G_ema,
augment_pipe, training_set_kwargs; EDM: ema, loss_fn, augment_pipe, dataset_kwargs).
`save_network_pkl` writes such a dict atomically, and refuses to write a stream that names
anything of gan_refine, so the result loads in a stock upstream checkout.
"""

import io
import os
import pickle
import pickletools
import zipfile

from . import compat as _compat
from .snapshot import atomic_write_bytes

_compat.install()

__all__ = ["load_network_pkl", "save_network_pkl", "resolve_source", "stream_globals", "describe",
           "NetworkPickleError", "pickle_layout"]

# Module prefixes an exported stream may reference: what upstream loaders can import.
ALLOWED_MODULE_PREFIXES = ("torch", "numpy", "collections", "builtins", "copyreg", "_codecs",
                           "torch_utils.persistence", "dnnlib.util", "dnnlib")

LAYOUTS = {
    "stylegan": ("G", "D", "G_ema"),
    "edm": ("ema",),
}


class NetworkPickleError(ValueError):
    """The file is not a network pickle we can use; the message says what it is and what to do."""


def pickle_layout(data):
    """'stylegan' or 'edm' for a loaded network pickle dict, else None."""
    if not isinstance(data, dict):
        return None
    if "G_ema" in data or ("G" in data and "D" in data):
        return "stylegan"
    if "ema" in data:
        return "edm"
    return None


class _NetworkUnpickler(pickle.Unpickler):
    """Maps names that moved between library versions; rejects TensorFlow-era pickles."""

    def find_class(self, module, name):
        if module.startswith("dnnlib.tflib") or module.startswith("tensorflow"):
            raise NetworkPickleError(
                "this is a TensorFlow-era StyleGAN/StyleGAN2 pickle (dnnlib.tflib networks), which "
                "holds TensorFlow graphs, not PyTorch modules; convert it first with the "
                "stylegan2-ada-pytorch repository's legacy.py (--source old.pkl --dest new.pkl) "
                "and pass the converted file")
        # numpy 2 writes numpy._core.*, numpy 1 wrote numpy.core.*: accept either on either.
        if module.startswith("numpy._core") or module.startswith("numpy.core"):
            tail = module.split(".", 2)[2] if module.count(".") >= 2 else ""
            for prefix in ("numpy._core", "numpy.core"):
                candidate = prefix + ("." + tail if tail else "")
                try:
                    return super().find_class(candidate, name)
                except (ImportError, AttributeError):
                    continue
        return super().find_class(module, name)


def resolve_source(src):
    """Path, URL or pretrained name -> the path or URL to open; paths are checked.

    Raises UnknownModelError (a ValueError) for an unknown name, FileNotFoundError for a
    missing file and NetworkPickleError for a folder, each with a one-line message.
    """
    from . import pretrained
    target = os.fspath(src)
    if "://" not in target and not os.path.exists(target):
        target = pretrained.resolve(target)
    if "://" not in target and not os.path.exists(target):
        raise FileNotFoundError(f"no such network pickle: {target} (give a path, a URL or a name "
                                "from pretrained_urls.json)")
    if "://" not in target and os.path.isdir(target):
        raise NetworkPickleError(f"{target} is a folder; give the path of a network .pkl file")
    return target


def _open_source(src, verbose):
    """Resolve a path, URL or pretrained name to an open binary file and a display name."""
    from . import pretrained
    from .compat.dnnlib import util as dl  # our downloader, whoever provides `dnnlib`
    target = resolve_source(src)
    return dl.open_url(target, verbose=verbose, sha256=pretrained.expected_sha256(target)), target


def load_network_pkl(src, *, verbose=False):
    """Load a network pickle from a path, URL (http(s)/file) or name in pretrained_urls.json.

    Returns the pickled dict unchanged. Raises NetworkPickleError with a one-line explanation
    for TensorFlow-era pickles, torch.save checkpoints, truncated/corrupt files and pickles
    that are not StyleGAN/EDM network dicts. Executes code stored in the pickle.
    """
    f, name = _open_source(src, verbose)
    with f:
        head = f.read(4)
        f.seek(0)
        if head[:2] == b"PK":
            raise NetworkPickleError(
                f"{name} is a zip archive (a torch.save checkpoint?), not a network pickle; load it with "
                "torch.load into your own module and pass the module to the Python API instead")
        if not head or head[0] != 0x80:
            raise NetworkPickleError(f"{name} is not a pickle file (it does not start with a pickle header); "
                                     "check that you passed the right file and that the download completed")
        try:
            data = _NetworkUnpickler(f).load()
        except NetworkPickleError:
            raise
        except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            raise NetworkPickleError(f"{name} is truncated or corrupt ({type(err).__name__}: {err}); "
                                     "download it again") from err
        except (ModuleNotFoundError, AttributeError) as err:
            raise NetworkPickleError(f"{name} references code that is not available here ({err}); it is not a "
                                     "StyleGAN2-ADA/StyleGAN3/EDM network pickle, or it needs its own repository "
                                     "on PYTHONPATH") from err
    if isinstance(data, tuple) and len(data) == 3:
        raise NetworkPickleError(f"{name} holds a 3-tuple (a TensorFlow-era StyleGAN pickle layout); convert it "
                                 "with stylegan2-ada-pytorch's legacy.py first")
    if pickle_layout(data) is None:
        what = type(data).__name__ if not isinstance(data, dict) else "a dict with keys " + ", ".join(map(str, data))
        raise NetworkPickleError(f"{name} is not a StyleGAN/EDM network pickle: it holds {what}; expected keys "
                                 "G/D/G_ema (StyleGAN2-ADA, StyleGAN3) or ema (EDM)")
    return data


def stream_globals(stream):
    """Every (module, name) global a pickle stream references, found without unpickling it."""
    found = set()
    memo = {}
    recent = []  # values of the last push-like opcodes; STACK_GLOBAL pops two strings
    for op, arg, _ in pickletools.genops(stream):
        if op.name == "GLOBAL" or op.name == "INST":
            module, name = arg.split(" ", 1)
            found.add((module, name))
            recent.append(None)
        elif op.name == "STACK_GLOBAL":
            found.add((recent[-2], recent[-1]))
            recent.append(None)
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
                         "SHORT_BINSTRING", "BINSTRING", "STRING"):
            recent.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = recent[-1] if recent else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(arg))
        else:
            recent.append(None)
        if len(recent) > 64:
            del recent[:-8]
    return found


def _check_stream(stream):
    bad = sorted({f"{m}.{n}" for m, n in stream_globals(stream)
                  if not any(m == p or m.startswith(p + ".") for p in ALLOWED_MODULE_PREFIXES)})
    if bad:
        raise NetworkPickleError(
            "refusing to write a network pickle that upstream loaders could not import; it references "
            + ", ".join(bad[:5]) + ("..." if len(bad) > 5 else "")
            + " (make those modules persistent classes or leave them out of the dict)")


def save_network_pkl(data, path, *, metadata=None, check=True):
    """Write `data` (a network pickle dict) to `path` atomically.

    `metadata`, if given, is stored under the key 'gan_refine' (plain Python types only).
    With `check`, the stream is inspected first and nothing is written if it would reference
    anything other than torch, numpy, collections, `torch_utils.persistence` and `dnnlib.util`.
    An existing file at `path` is replaced only once the new one is complete.
    """
    if not isinstance(data, dict):
        raise TypeError("save_network_pkl expects the network dict (e.g. with G, D, G_ema or ema)")
    if metadata is not None:
        data = dict(data)
        data["gan_refine"] = metadata
    buf = io.BytesIO()
    pickle.dump(data, buf)
    stream = buf.getvalue()
    if check:
        _check_stream(stream)
    atomic_write_bytes(path, stream)
    return path


def describe(data):
    """A short human-readable summary of a loaded network pickle dict."""
    lines = []
    layout = pickle_layout(data)
    lines.append(f"layout: {layout}  keys: {', '.join(map(str, data.keys()))}")
    for key in ("G_ema", "G", "D", "ema", "augment_pipe", "loss_fn"):
        net = data.get(key)
        if net is None:
            continue
        params = sum(p.numel() for p in net.parameters()) if hasattr(net, "parameters") else 0
        attrs = []
        for a in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "label_dim",
                  "sigma_min", "sigma_max", "sigma_data"):
            if hasattr(net, a):
                attrs.append(f"{a}={getattr(net, a)}")
        lines.append(f"{key}: {type(net).__name__}  params={params:,}  " + " ".join(attrs))
    return "\n".join(lines)
