"""gan_refine: refine pretrained GAN generators with Diff-Instruct against a diffusion teacher.

Importing this package makes `dnnlib` and `torch_utils` importable under their upstream names
(our own implementation, see `gan_refine.compat`) unless the user already has their own, which
always wins. Loading a network pickle runs code stored inside it: only load files you trust.
"""

import os as _os

from . import compat as _compat

_compat.install()

# Installed, `adapters/` becomes gan_refine/adapters (package-dir mapping). Run from a source
# checkout on PYTHONPATH, let `gan_refine.adapters` find the top-level folder instead.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "adapters")) and _os.path.isfile(
        _os.path.join(_os.path.dirname(_here), "adapters", "__init__.py")):
    __path__.append(_os.path.dirname(_here))

__version__ = "0.1.0"

_LAZY = {
    "load_network_pkl": ("gan_refine.pickles", "load_network_pkl"),
    "save_network_pkl": ("gan_refine.pickles", "save_network_pkl"),
    "Refiner": ("gan_refine.refiner", "Refiner"),
    "refine": ("gan_refine.refiner", "refine"),
    "RefineConfig": ("gan_refine.config", "RefineConfig"),
    "as_generator": ("gan_refine.adapters", "as_generator"),
    "as_teacher": ("gan_refine.adapters", "as_teacher"),
}


def __getattr__(name):
    # Lazy so that `import gan_refine` stays cheap and the CLI starts fast.
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'gan_refine' has no attribute {name!r}")
