"""Bias, FIR upsampling, leaky ReLU, clamp and FIR downsampling in one call (StyleGAN3's
alias-free nonlinearity). `impl='cuda'` uses a fused kernel when available."""

import numpy as np
import torch

from .. import misc
from . import bias_act
from . import upfirdn2d
from .upfirdn2d import _get_filter_size, _parse_padding


_plugin = None  # the loaded CUDA plugin once _init() succeeded


def _init():
    """Build the CUDA kernels now instead of on first use; True when they are available."""
    global _plugin  # pylint: disable=global-statement
    if _plugin is None:
        from . import _load_plugin
        _plugin = _load_plugin("filtered_lrelu")
    return _plugin is not None


def filtered_lrelu(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=np.sqrt(2), slope=0.2, clamp=None,
                   flip_filter=False, impl="cuda"):
    """Compute, per channel:

        y = upfirdn2d(x + b, fu, up=up, padding=padding, gain=up**2)
        y = clamp(lrelu(y, slope) * gain, -clamp, clamp)
        y = upfirdn2d(y, fd, down=down)

    Args:
        x: [batch, channels, height, width].
        fu, fd: float32 up/down filters from upfirdn2d.setup_filter() (1-D separable or 2-D);
            None = identity.
        b: optional bias of length `channels`.
        padding: int, [px, py] or [x0, x1, y0, y1], applied to the upsampled image.
        clamp: None = no clamping.

    Output width: (width * up + px0 + px1 - (fu_w - 1) - (fd_w - 1) + down - 1) // down.
    """
    assert isinstance(x, torch.Tensor)
    assert impl in ("ref", "cuda")
    px0, px1, py0, py1 = _parse_padding(padding)
    if clamp is not None:
        clamp = float(clamp)

    from . import _cuda
    if _cuda.use_cuda("filtered_lrelu", impl, x):
        return _cuda.filtered_lrelu(x, fu, fd, b, int(up), int(down), px0, px1, py0, py1, float(gain), float(slope),
                                    clamp, bool(flip_filter))
    return _filtered_lrelu_ref(x, fu=fu, fd=fd, b=b, up=up, down=down, padding=padding, gain=gain, slope=slope,
                               clamp=clamp, flip_filter=flip_filter)


@misc.profiled_function
def _filtered_lrelu_ref(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=np.sqrt(2), slope=0.2, clamp=None,
                        flip_filter=False):
    """Pure PyTorch filtered_lrelu, built from bias_act and upfirdn2d reference paths."""
    assert isinstance(x, torch.Tensor) and x.ndim == 4
    fu_w, fu_h = _get_filter_size(fu)
    fd_w, fd_h = _get_filter_size(fd)
    if b is not None:
        assert isinstance(b, torch.Tensor) and b.dtype == x.dtype
        misc.assert_shape(b, [x.shape[1]])
    up, down = upfirdn2d._parse_scaling([up, down])  # accepts numpy integers too
    px0, px1, py0, py1 = _parse_padding(padding)
    assert gain == float(gain) and gain > 0
    assert slope == float(slope) and slope >= 0
    assert clamp is None or (clamp == float(clamp) and clamp >= 0)

    batch_size, channels, in_h, in_w = x.shape
    in_dtype = x.dtype
    out_w = (in_w * up + (px0 + px1) - (fu_w - 1) - (fd_w - 1) + (down - 1)) // down
    out_h = (in_h * up + (py0 + py1) - (fu_h - 1) - (fd_h - 1) + (down - 1)) // down

    x = bias_act.bias_act(x=x, b=b, impl="ref")
    x = upfirdn2d.upfirdn2d(x=x, f=fu, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter,
                            impl="ref")
    x = bias_act.bias_act(x=x, act="lrelu", alpha=slope, gain=gain, clamp=clamp, impl="ref")
    x = upfirdn2d.upfirdn2d(x=x, f=fd, down=down, flip_filter=flip_filter, impl="ref")

    misc.assert_shape(x, [batch_size, channels, out_h, out_w])
    assert x.dtype == in_dtype
    return x
