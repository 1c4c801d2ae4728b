"""2-D convolution fused with FIR upsampling and downsampling.

The result always equals the naive composition

    y = upfirdn2d(x, f, up=up, padding=p', gain=up**2)     (only when up > 1; else just pad)
    y = conv2d(y, w, groups=groups)                         (correlation unless flip_weight=False)
    y = upfirdn2d(y, f, down=down)                          (only when down > 1)

where p' is `padding` plus what upsample2d()/downsample2d() would add to centre the filter.
Because convolution and FIR filtering commute, the work can be rearranged: upsampling merges
the zero insertion into a strided transposed convolution, downsampling filters first and then
runs a strided convolution that never computes the discarded pixels.
"""

import torch

from .. import misc
from . import conv2d_gradfix
from . import upfirdn2d
from .upfirdn2d import _parse_padding, _get_filter_size


def _get_weight_shape(w):
    with misc.suppress_tracer_warnings():
        return [int(size) for size in w.shape]


def _conv2d_wrapper(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    """conv2d (correlation) or its transpose; `flip_weight=False` turns it into true convolution."""
    _out_channels, _in_channels_per_group, kh, kw = _get_weight_shape(w)
    if not flip_weight and (kw > 1 or kh > 1):
        w = w.flip([2, 3])
    op = conv2d_gradfix.conv_transpose2d if transpose else conv2d_gradfix.conv2d
    return op(x, w, stride=stride, padding=padding, groups=groups)


@misc.profiled_function
def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """Convolve `x` [N, C_in, H, W] with `w` [C_out, C_in/groups, kh, kw], resampling with FIR `f`.

    Args:
        f: float32 filter from upfirdn2d.setup_filter(); None = no filtering.
        up, down: integer resampling factors.
        padding: int, [px, py] or [x0, x1, y0, y1], in the (upsampled) input's pixels.
        flip_weight: True = correlation like torch's conv2d, False = true convolution.
        flip_filter: passed to upfirdn2d.
    """
    assert isinstance(x, torch.Tensor) and x.ndim == 4
    assert isinstance(w, torch.Tensor) and w.ndim == 4 and w.dtype == x.dtype
    assert f is None or (isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32)
    assert isinstance(up, int) and up >= 1
    assert isinstance(down, int) and down >= 1
    assert isinstance(groups, int) and groups >= 1
    out_channels, in_channels_per_group, kh, kw = _get_weight_shape(w)
    fw, fh = _get_filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)

    # Same centring as upsample2d() / downsample2d().
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    pad = [px0, px1, py0, py1]
    pointwise = kw == 1 and kh == 1

    # A 1x1 convolution only mixes channels, so run it at the lower resolution.
    if pointwise and down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
    if pointwise and up > 1 and down == 1:
        x = _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d.upfirdn2d(x, f, up=up, padding=pad, gain=up ** 2, flip_filter=flip_filter)

    # Downsampling: filter at full resolution, then a strided convolution.
    if down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv2d_wrapper(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling: convolving the zero-inserted image is a transposed convolution with stride `up`.
    # Its output starts kw - 1 pixels before the upsampled image and ends kw - up pixels after
    # it, so shift the requested padding by those amounts; the part of the crop common to both
    # sides goes into the transposed convolution's own padding, the rest into the filter step.
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_channels_per_group, kh, kw)
            w = w.transpose(1, 2)
            w = w.reshape(groups * in_channels_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        # A transposed convolution is a true convolution, so the weight flip is inverted.
        x = _conv2d_wrapper(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True,
                            flip_weight=not flip_weight)
        x = upfirdn2d.upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                                flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # No resampling (f is unused): torch's own padding when symmetric and non-negative, else
    # pad or crop explicitly first.
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv2d_wrapper(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d.upfirdn2d(x, None, padding=pad)
    return _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
