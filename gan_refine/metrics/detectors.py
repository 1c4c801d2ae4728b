"""Feature detectors for FID/KID: uint8 images in, float feature vectors out.

A detector follows the calling convention of the StyleGAN/EDM metric code: it takes uint8
images [N, C, H, W] and, called with `return_features=True` where it accepts that keyword,
returns [N, D] features. The standard one is the Inception-v3 TorchScript model
`inception-2015-12-05` (2048-d pool features; it resizes to 299x299 itself), downloaded once
into the dnnlib cache. Other detectors plug in by name (`register_detector`), as a TorchScript
file or URL, or as any `torch.nn.Module`.
"""

import inspect
import os
import pickle
import threading
import warnings

import numpy as np
import torch

from ..compat.dnnlib import util as dl

__all__ = ["Detector", "ModuleDetector", "get_detector", "register_detector",
           "register_detector_url", "unregister_detector", "detector_names",
           "load_detector_file", "INCEPTION", "VGG16", "VGG16_URL", "auto_device"]

INCEPTION = "inception-2015-12-05"
# StyleGAN2-ADA's precision/recall (and LPIPS) network: TorchScript VGG16 taking uint8 RGB,
# resizing to 224x224 itself, returning its 4096-d fc features with return_features=True.
VGG16 = "vgg16"
VGG16_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"
_INPUT_RANGES = ("uint8", "unit", "symmetric")


def auto_device(device=None):
    """torch.device from a name; None or 'auto' picks CUDA when present, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Detector:
    """Base class: `__call__(images_uint8_NCHW) -> float32 [N, feature_dim]` on `device`."""

    name = "detector"
    feature_dim = None
    device = torch.device("cpu")

    def __call__(self, images):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, feature_dim={self.feature_dim})"


def _forward_params(module):
    """Parameter names of `module.forward` (TorchScript or eager), or None if opaque."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:
        return [a.name for a in schema.arguments][1:]
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params]


class ModuleDetector(Detector):
    """Any `torch.nn.Module` (TorchScript included) that maps images to features.

    Args:
        module: the network; it is moved to `device` and put in eval mode.
        name: shown in results and stored in reference statistics files.
        feature_dim: output size; defaults to `module.feature_dim`, else one probe forward.
        channels: colour channels the module expects (default `module.img_channels`, else
            any). Single-channel images are repeated to 3 channels when it wants 3.
        input_range: what the module is fed: 'uint8' (the images as they are; the
            StyleGAN/Inception convention), 'unit' (float in [0, 1]) or 'symmetric' (float in
            [-1, 1]). Defaults to `module.input_range`, else 'uint8'.
        probe_resolution: image size for the feature_dim probe (default
            `module.img_resolution`, else 32).
    """

    def __init__(self, module, name=None, device=None, feature_dim=None, channels=None,
                 input_range=None, probe_resolution=None):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"a detector must be a torch.nn.Module, got {type(module).__name__}")
        self.device = auto_device(device)
        self.module = module.to(self.device).eval()
        self.name = name or type(module).__name__
        self.channels = channels if channels is not None else getattr(module, "img_channels", None)
        self.input_range = input_range or getattr(module, "input_range", "uint8")
        if self.input_range not in _INPUT_RANGES:
            raise ValueError(f"input_range must be one of {_INPUT_RANGES}, got {self.input_range!r}")
        self.probe_resolution = int(probe_resolution or getattr(module, "img_resolution", 32))
        params = _forward_params(module)
        self._kwargs = {"return_features": True} if params and "return_features" in params else {}
        dim = feature_dim if feature_dim is not None else getattr(module, "feature_dim", None)
        self._feature_dim = None if dim is None else int(dim)

    @property
    def feature_dim(self):
        if self._feature_dim is None:
            probe = torch.zeros([2, self.channels or 3, self.probe_resolution,
                                 self.probe_resolution], dtype=torch.uint8)
            self._feature_dim = int(self(probe).shape[1])
        return self._feature_dim

    def __call__(self, images):
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if not torch.is_tensor(images) or images.ndim != 4:
            raise ValueError("a detector takes images as a uint8 [N, C, H, W] tensor")
        if images.dtype != torch.uint8:
            raise TypeError(f"a detector takes uint8 images, got {images.dtype}; quantise with "
                            f"gan_refine.metrics.quantize first")
        images = images.to(self.device)
        if self.channels is not None and images.shape[1] != self.channels:
            if images.shape[1] == 1 and self.channels == 3:
                images = images.repeat([1, 3, 1, 1])
            else:
                raise ValueError(f"detector {self.name!r} expects {self.channels}-channel images, "
                                 f"got {images.shape[1]}")
        if self.input_range == "unit":
            images = images.to(torch.float32) / 255
        elif self.input_range == "symmetric":
            images = images.to(torch.float32) / 127.5 - 1
        with torch.no_grad():
            out = self.module(images, **self._kwargs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not torch.is_tensor(out) or out.shape[0] != images.shape[0]:
            raise ValueError(f"detector {self.name!r} did not return one feature row per image")
        out = out.reshape(out.shape[0], -1).to(torch.float32)
        if self._feature_dim is not None and out.shape[1] != self._feature_dim:
            raise ValueError(f"detector {self.name!r} returned {out.shape[1]} features, "
                             f"expected {self._feature_dim}")
        return out


def load_detector_file(path, device=None, name=None, **kw):
    """A detector from a local TorchScript file (or a pickled module, for .pkl files)."""
    device = auto_device(device)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such detector file: {path}")
    if path.endswith(".pkl"):
        # StyleGAN3/EDM host the same network pickled; unpickling runs code, as for any pickle.
        with open(path, "rb") as f:
            module = pickle.load(f)
    else:
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated upstream, but it is the format the detectors ship in.
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(path, map_location=device)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{path} is not a TorchScript file ({str(err).splitlines()[0]}); "
                             f"save the detector with torch.jit.save, or pass the module itself") from err
    return ModuleDetector(module, name=name or os.path.basename(path), device=device, **kw)


# ----------------------------------------------------------------------------
# Registry: name -> factory(device) returning a Detector or an nn.Module.

_REGISTRY = {}
_LOADED = {}
_LOCK = threading.Lock()


def register_detector(name, factory, overwrite=False):
    """Make `get_detector(name)` call `factory(device)` (a Detector or nn.Module comes back)."""
    if not callable(factory):
        raise TypeError("factory must be callable: factory(device) -> Detector or nn.Module")
    with _LOCK:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"a detector named {name!r} is already registered (overwrite=True "
                             f"replaces it)")
        _REGISTRY[name] = factory
        for key in [k for k in _LOADED if k[0] == name]:
            del _LOADED[key]


def unregister_detector(name):
    with _LOCK:
        _REGISTRY.pop(name, None)
        for key in [k for k in _LOADED if k[0] == name]:
            del _LOADED[key]


# Built-in detectors whose module registers them on first use (keeps `import` cheap and the
# zoo out of the import graph until asked for): name -> (module, registration function).
_LAZY_BUILTINS = {"digits": ("gan_refine.zoo.digits_classifier", "register_digits_detector")}


def _register_lazy(name):
    spec = _LAZY_BUILTINS.get(name)
    if spec is not None and name not in _REGISTRY:
        import importlib
        getattr(importlib.import_module(spec[0]), spec[1])()


def detector_names():
    return sorted(set(_REGISTRY) | set(_LAZY_BUILTINS))


def register_detector_url(name, url, sha256=None, overwrite=False, **kw):
    """Register a TorchScript detector fetched from `url` into the dnnlib cache on first use.

    `sha256`, when given, is checked before the file is kept; keywords go to ModuleDetector.
    """
    def factory(device):
        path = dl.open_url(url, return_filename=True, sha256=sha256)
        return load_detector_file(path, device=device, name=name, **kw)
    register_detector(name, factory, overwrite=overwrite)


def _pretrained_entry(name):
    """The pretrained-table entry for `name` as a dict, or None."""
    from .. import pretrained
    return pretrained.lookup(name)


def _inception_factory(device):
    entry = _pretrained_entry(INCEPTION)
    url = entry["url"]
    path = dl.open_url(url, return_filename=True, sha256=entry.get("sha256"))
    # The TorchScript model resizes to 299x299 and takes uint8 RGB; 2048-d pool features.
    return load_detector_file(path, device=device, name=INCEPTION, feature_dim=2048, channels=3,
                              input_range="uint8")


register_detector(INCEPTION, _inception_factory)
# No published checksum is known for it; a file copied into the dnnlib cache is used as it is.
register_detector_url(VGG16, VGG16_URL, channels=3, input_range="uint8")


def _as_detector(obj, name, device):
    if isinstance(obj, Detector):
        return obj
    if isinstance(obj, torch.nn.Module):
        return ModuleDetector(obj, name=name, device=device)
    raise TypeError(f"detector factory for {name!r} returned {type(obj).__name__}, expected a "
                    f"Detector or torch.nn.Module")


def get_detector(name_or_path, device=None, sha256=None):
    """A ready detector from a registered name, a pretrained-table name (role 'detector'), a
    TorchScript file path or http(s) URL, an nn.Module, or a Detector (returned as is).

    Named and downloaded detectors are loaded once per device and reused.
    """
    device = auto_device(device)
    if isinstance(name_or_path, Detector):
        return name_or_path
    if isinstance(name_or_path, torch.nn.Module):
        return ModuleDetector(name_or_path, device=device)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"cannot use {type(name_or_path).__name__} as a detector")
    spec = os.fspath(name_or_path)
    key = (spec, str(device), sha256)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
    _register_lazy(spec)
    with _LOCK:
        factory = _REGISTRY.get(spec)
    if factory is not None:
        det = _as_detector(factory(device), spec, device)
    elif os.path.isfile(spec):
        return load_detector_file(spec, device=device)  # a local file may change: no memo
    elif dl.is_url(spec, allow_file_urls=True):
        det = load_detector_file(dl.open_url(spec, return_filename=True, sha256=sha256),
                                 device=device, name=os.path.basename(spec))
    else:
        entry = _pretrained_entry(spec)
        if entry is None or entry.get("role") != "detector" or not entry.get("url"):
            known = ", ".join(detector_names())
            raise ValueError(f"unknown detector {spec!r}: give a registered name ({known}), a "
                             f"TorchScript file or URL, or a torch.nn.Module")
        path = dl.open_url(entry["url"], return_filename=True, sha256=entry.get("sha256"))
        det = load_detector_file(path, device=device, name=spec)
    with _LOCK:
        _LOADED[key] = det
    return det

