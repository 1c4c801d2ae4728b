"""Our own implementation of the `dnnlib` and `torch_utils` names that network pickles use.

StyleGAN2-ADA, StyleGAN3 and EDM pickles reference `torch_utils.persistence` and
`dnnlib.util` by their top-level names, and the network source embedded in them imports
`torch_utils.ops.*` at load time. This folder holds two plain top-level packages,
`dnnlib/` and `torch_utils/`, that use only relative imports among themselves and never
import `gan_refine`, so they also work when this folder is put on `sys.path` directly.

`install()` makes them importable under their upstream names *only when the user has none*:
the finder is appended to the end of `sys.meta_path`, so a `torch_utils` or `dnnlib` found
on `sys.path` (the user's own StyleGAN or EDM checkout) always wins.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

COMPAT_DIR = os.path.dirname(os.path.abspath(__file__))
NAMES = ("dnnlib", "torch_utils")


class _CompatFinder(importlib.abc.MetaPathFinder):
    """Resolves the top-level `dnnlib` / `torch_utils` to our folder as a last resort.

    Submodules need no help: once the package is loaded with our folder as its
    `__path__`, the ordinary path finder resolves `torch_utils.ops.bias_act` etc.
    """

    def find_spec(self, fullname, path=None, target=None):
        if path is not None or fullname not in NAMES:
            return None
        init = os.path.join(COMPAT_DIR, fullname, "__init__.py")
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[os.path.join(COMPAT_DIR, fullname)])


_finder = _CompatFinder()


def install():
    """Make `dnnlib` and `torch_utils` importable, preferring the user's own copies."""
    if not any(isinstance(f, _CompatFinder) for f in sys.meta_path):
        sys.meta_path.append(_finder)


def uninstall():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _CompatFinder)]


def provider(name):
    """Return 'gan_refine' if `name` ('dnnlib' or 'torch_utils') resolves to ours, else its path."""
    mod = sys.modules.get(name)
    if mod is not None:
        origin = getattr(mod, "__file__", None) or ""
    else:
        spec = importlib.util.find_spec(name)
        origin = (spec.origin or "") if spec is not None else ""
    if origin and os.path.abspath(origin).startswith(COMPAT_DIR + os.sep):
        return "gan_refine"
    return origin or None
