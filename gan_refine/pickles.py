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
import sys

from . import compat as _compat
from .snapshot import atomic_write_bytes

_compat.install()

__all__ = ["load_network_pkl", "save_network_pkl", "resolve_source", "stream_globals", "describe",
           "NetworkPickleError", "PickleCodeError", "pickle_layout"]

# Module prefixes an exported stream may reference: what upstream loaders can import.
ALLOWED_MODULE_PREFIXES = ("torch", "numpy", "collections", "builtins", "copyreg", "_codecs",
                           "torch_utils.persistence", "dnnlib.util", "dnnlib")

LAYOUTS = {
    "stylegan": ("G", "D", "G_ema"),
    "edm": ("ema",),
}


class NetworkPickleError(ValueError):
    """The file is not a network pickle we can use; the message says what it is and what to do."""


class PickleCodeError(NetworkPickleError):
    """The Python code stored inside a network pickle raised while the pickle was loading."""


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

    def __init__(self, file, display_name="the pickle"):
        super().__init__(file)
        self.display_name = display_name

    def find_class(self, module, name):
        if module.startswith("dnnlib.tflib") or module.startswith("tensorflow"):
            raise NetworkPickleError(
                f"{self.display_name} is a TensorFlow-era StyleGAN/StyleGAN2 pickle (dnnlib.tflib "
                "networks), which holds TensorFlow graphs, not PyTorch modules; convert it first with the "
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
    """Resolve a path, URL or pretrained name to an open binary file and a display name.

    A table entry's sha256 is checked for local and shipped files too, not only downloads.
    """
    from . import pretrained
    from .compat.dnnlib import util as dl  # our downloader, whoever provides `dnnlib`
    target = resolve_source(src)
    sha256 = pretrained.verify_local(target)
    return dl.open_url(target, verbose=verbose, sha256=sha256), target


def _one_line(text, limit=160):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# Where embedded code runs: upstream's persistence and ours both rebuild objects in a function of
# this name, and exec the stored source into modules named like this.
_RECONSTRUCT = "_reconstruct_persistent_obj"
_EXEC_MODULE_PREFIX = "_imported_module_"


def _embedded_origin(err):
    """(class name, line in its stored source) if `err` came from code stored in the pickle.

    Returns None for errors of the stream itself. The class name or line may be None.
    """
    class_name, line, inside = None, None, False
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == _RECONSTRUCT:
            inside = True
            meta = frame.f_locals.get("meta")
            class_name = meta.get("class_name") if isinstance(meta, dict) else class_name
        elif inside and (frame.f_code.co_filename == "<string>"
                         or str(frame.f_globals.get("__name__", "")).startswith(_EXEC_MODULE_PREFIX)):
            line = tb.tb_lineno
        tb = tb.tb_next
    if isinstance(err, SyntaxError) and err.filename == "<string>":
        line = err.lineno
    return (class_name, line) if inside else None


def _embedded_code_error(name, err, origin):
    class_name, line = origin
    where = ", ".join(x for x in (f"class {class_name}" if class_name else "",
                                  f"line {line} of its stored source" if line else "") if x)
    text = err.msg if isinstance(err, SyntaxError) else err  # its str repeats '<string>, line N'
    what = f"{type(err).__name__}: {_one_line(text) or 'no message'}" + (f"; {where}" if where else "")
    if isinstance(err, ImportError):
        missing = getattr(err, "name", None)
        advice = (f"install the package that provides {missing!r}" if missing else
                  "install the package its code imports") + \
            ", or put the repository that made the pickle on PYTHONPATH"
    else:
        advice = ("re-export it with the tool that made it, and check that it is a StyleGAN2-ADA, "
                  "StyleGAN3 or EDM network pickle")
    return PickleCodeError(f"{name}: the code stored inside this network pickle failed while "
                           f"loading ({what}); this is the pickle's own code, not gan_refine's: "
                           f"{advice}")


def _persistence_caches():
    """persistence's source -> module cache, from whichever torch_utils is in use (or None)."""
    module = sys.modules.get("torch_utils.persistence")
    cache = getattr(module, "_src_to_module_dict", None)
    return (module, cache) if isinstance(cache, dict) else (None, None)


def _forget_modules_since(known):
    """Drop modules that persistence executed since `known` (a set of sources) was taken.

    persistence caches a module before executing its source, so after a failed exec the cache
    holds a half-run module, and a second load of the same pickle would quietly reuse it (and
    succeed, if the failure came after the class definitions). Forgetting the modules of a
    failed load makes every retry run the stored source again and fail the same way.
    """
    module, cache = _persistence_caches()
    if cache is None:
        return
    for src in [s for s in cache if s not in known]:
        mod = cache.pop(src)
        getattr(module, "_module_to_src_dict", {}).pop(mod, None)
        if sys.modules.get(getattr(mod, "__name__", None)) is mod:
            del sys.modules[mod.__name__]


def _unpickle(f, name):
    """Unpickle a network stream, turning every failure into a one-line NetworkPickleError."""
    cache = _persistence_caches()[1]
    known = set(cache) if cache is not None else set()
    try:
        return _NetworkUnpickler(f, name).load()
    except NetworkPickleError:
        _forget_modules_since(known)
        raise
    except (Exception, SystemExit) as err:  # embedded code may raise anything, even SystemExit
        _forget_modules_since(known)
        origin = _embedded_origin(err)
        if origin is not None:
            raise _embedded_code_error(name, err, origin) from err
        if isinstance(err, SystemExit):
            raise
        if isinstance(err, (ModuleNotFoundError, AttributeError)):
            raise NetworkPickleError(
                f"{name} references code that is not available here ({_one_line(err)}); it is not a "
                "StyleGAN2-ADA/StyleGAN3/EDM network pickle, or it needs its own repository on "
                "PYTHONPATH") from err
        detail = type(err).__name__ + (f": {_one_line(err)}" if _one_line(err) else "")
        raise NetworkPickleError(f"{name} is truncated or corrupt ({detail}); download or export "
                                 "it again") from err


def load_network_pkl(src, *, verbose=False):
    """Load a network pickle from a path, URL (http(s)/file) or name in pretrained_urls.json.

    Returns the pickled dict unchanged. Raises NetworkPickleError with a one-line explanation
    for TensorFlow-era pickles, torch.save checkpoints, truncated/corrupt files and pickles
    that are not StyleGAN/EDM network dicts; PickleCodeError (a NetworkPickleError) when code
    stored in the pickle raises; dnnlib.util.ChecksumError (an OSError) when a file listed in
    pretrained_urls.json with a sha256 does not match. Executes code stored in the pickle.
    """
    f, name = _open_source(src, verbose)
    with f:
        head = f.read(4)
        f.seek(0)
        if head[:2] == b"PK":
            raise NetworkPickleError(
                f"{name} is a zip archive (a torch.save checkpoint?), not a network pickle; load it with "
                "torch.load into your own module and pass the module to the Python API instead")
        if not head:
            raise NetworkPickleError(f"{name} is empty (0 bytes); download or export it again")
        if head[0] != 0x80:
            raise NetworkPickleError(f"{name} is not a pickle file (it does not start with a pickle header); "
                                     "check that you passed the right file and that the download completed")
        data = _unpickle(f, name)
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
