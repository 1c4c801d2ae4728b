"""Upsample, FIR-filter and downsample 2-D images (`impl='cuda'` uses a kernel when available).

One call does, per channel: insert `up - 1` zeros after every pixel, pad (negative values
crop), convolve with the FIR filter `f` (a true convolution; `flip_filter=True` correlates),
and keep every `down`-th pixel. A 1-D filter is applied separably (horizontal then vertical),
a 2-D filter as is.
"""

import numbers

import torch
import torch.nn.functional as F

from .. import misc


_plugin = None  # the loaded CUDA plugin once _init() succeeded


def _init():
    """Build the CUDA kernels now instead of on first use; True when they are available."""
    global _plugin  # pylint: disable=global-statement
    if _plugin is None:
        from . import _load_plugin
        _plugin = _load_plugin("upfirdn2d")
    return _plugin is not None


def _parse_scaling(scaling):
    if isinstance(scaling, numbers.Integral):
        scaling = [scaling, scaling]
    assert isinstance(scaling, (list, tuple))
    assert all(isinstance(s, numbers.Integral) for s in scaling)
    sx, sy = (int(s) for s in scaling)
    assert sx >= 1 and sy >= 1
    return sx, sy


def _parse_padding(padding):
    """int -> all four sides; [px, py] -> both sides of each axis; [x0, x1, y0, y1] as is."""
    if isinstance(padding, numbers.Integral):
        padding = [padding, padding]
    assert isinstance(padding, (list, tuple))
    assert all(isinstance(p, numbers.Integral) for p in padding)
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    padx0, padx1, pady0, pady1 = (int(p) for p in padding)
    return padx0, padx1, pady0, pady1


def _get_filter_size(f):
    """(width, height) of a filter tensor; (1, 1) for None."""
    if f is None:
        return 1, 1
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2)
    with misc.suppress_tracer_warnings():
        fw = int(f.shape[-1])
        fh = int(f.shape[0])
    assert fw >= 1 and fh >= 1
    return fw, fh


def setup_filter(f, device=torch.device("cpu"), normalize=True, flip_filter=False, gain=1, separable=None):
    """Turn filter taps into the float32 tensor that upfirdn2d() expects.

    Args:
        f: None (= [1]), a scalar, 1-D taps or a 2-D kernel (anything torch.as_tensor accepts).
        normalize: scale the taps to sum to 1.
        flip_filter: flip the taps (so the filter is applied as a correlation).
        gain: overall gain of the 2-D filter; a separable filter gets sqrt(gain) per axis.
        separable: keep a 1-D filter 1-D; default True only for 8 or more taps, since the
            extra pass of a separable filter does not pay off for short ones.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    assert f.ndim in (0, 1, 2)
    assert f.numel() > 0
    if f.ndim == 0:
        f = f.reshape(1)
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    assert f.ndim == (1 if separable else 2)

    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="cuda"):
    """Pad, upsample, filter and downsample a batch of 2-D images.

    Args:
        x: [batch, channels, height, width] tensor.
        f: float32 filter, [taps] (separable) or [fh, fw]; None = identity.
        up, down: integer factors, or [x, y] pairs.
        padding: int, [px, py] or [x0, x1, y0, y1]; applied after upsampling, negative crops.
        flip_filter: correlate instead of convolve.
        gain: overall signal gain.

    Output size along x: (width * upx + padx0 + padx1 - fw + downx) // downx, likewise along y.
    """
    assert isinstance(x, torch.Tensor)
    assert impl in ("ref", "cuda")
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)

    from . import _cuda
    if _cuda.use_cuda("upfirdn2d", impl, x):
        fk = torch.ones([1, 1], dtype=torch.float32, device=x.device) if f is None else f.to(device=x.device, dtype=torch.float32)
        return _cuda.upfirdn2d(x, fk, upx, upy, downx, downy, padx0, padx1, pady0, pady1, bool(flip_filter), float(gain))
    return _upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


@misc.profiled_function
def _upfirdn2d_ref(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Pure PyTorch upfirdn2d: zero insertion, padding/cropping, depthwise strided convolution."""
    assert isinstance(x, torch.Tensor) and x.ndim == 4
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2)
    assert f.dtype == torch.float32 and not f.requires_grad
    n, c, h, w = x.shape
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)

    fw, fh = _get_filter_size(f)
    assert w * upx + padx0 + padx1 >= fw and h * upy + pady0 + pady1 >= fh, "filter larger than the padded image"

    # Zero insertion: each pixel becomes the top-left corner of an up x up block.
    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)

    # Positive padding with zeros, negative padding by slicing.
    x = F.pad(x, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
    x = x[:, :, max(-pady0, 0): x.shape[2] - max(-pady1, 0), max(-padx0, 0): x.shape[3] - max(-padx1, 0)]

    # The gain is applied in at least float32 *before* casting to the input's dtype, so a
    # float16 input (StyleGAN2-ADA runs its top blocks in float16 even on CPU) gets taps
    # rounded once, as upstream's networks did; float32 inputs see the identical product.
    # conv2d correlates, so flip the taps to get a true convolution. Striding the convolution
    # equals filtering then keeping every down-th pixel, without computing the dropped ones.
    f = f.to(device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        weight = f[None, None].repeat(c, 1, 1, 1)
        x = F.conv2d(x, weight, stride=(downy, downx), groups=c)
    else:
        taps = f.numel()
        x = F.conv2d(x, f.reshape(1, 1, 1, taps).repeat(c, 1, 1, 1), stride=(1, downx), groups=c)
        x = F.conv2d(x, f.reshape(1, 1, taps, 1).repeat(c, 1, 1, 1), stride=(downy, 1), groups=c)
    return x


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl="cuda"):
    """Filter without resampling; padding is added around the filter's own so the size is kept."""
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl="cuda"):
    """Upsample by `up` (size multiplied), with gain up**2 so that the mean level is preserved."""
    upx, upy = _parse_scaling(up)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    # The zero-inserted image needs fw - 1 extra columns in total; centre the filter on them.
    p = [padx0 + (fw + upx - 1) // 2, padx1 + (fw - upx) // 2, pady0 + (fh + upy - 1) // 2, pady1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl="cuda"):
    """Downsample by `down` (size divided, rounding down)."""
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + (fw - downx + 1) // 2, padx1 + (fw - downx) // 2, pady0 + (fh - downy + 1) // 2, pady1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
