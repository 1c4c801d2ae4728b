# Custom ops with a pure-PyTorch reference path and optional CUDA kernels.

import warnings


def _load_plugin(op):
    """Build (or load from cache) every CUDA plugin behind `op` now; its module, or None.

    Upstream training and pre-compilation scripts call `<op>._init()` at start-up to build the
    kernels early. A failure only means the op keeps using its reference path, so it warns
    instead of raising (StyleGAN2-ADA's behaviour).
    """
    from . import _cuda  # lazily: importing the ops must never start a build
    try:
        mods = [_cuda.plugin(name) for name in _cuda.OP_PLUGINS[op]]
    except Exception as err:  # noqa: BLE001 - any build problem means "use the reference"
        warnings.warn(f"could not build the CUDA plugin for {op}; using the PyTorch reference path. {err}",
                      RuntimeWarning, stacklevel=3)
        return None
    return mods[0]
