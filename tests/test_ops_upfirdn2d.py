"""upfirdn2d, its wrappers and filtered_lrelu against a float64 numpy reference written from
the definition (zero insertion, zero padding / cropping, true convolution, decimation)."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gan_refine  # noqa: F401  (installs the torch_utils alias)
from torch_utils.ops import filtered_lrelu, upfirdn2d


def _as_2d(f):
    f = np.asarray(f, dtype=np.float64)
    return np.outer(f, f) if f.ndim == 1 else f


def np_upfirdn2d(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip_filter=False, gain=1.0):
    """x: [N, C, H, W] array; f: 2-D taps (a 1-D filter must be passed as its outer product)."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    up_img = np.zeros((n, c, h * upy, w * upx))
    up_img[:, :, ::upy, ::upx] = x

    # Place the upsampled image at offset (py0, px0) of the padded canvas; negative offsets crop.
    hp, wp = h * upy + py0 + py1, w * upx + px0 + px1
    canvas = np.zeros((n, c, hp, wp))
    for i in range(hp):
        for j in range(wp):
            si, sj = i - py0, j - px0
            if 0 <= si < h * upy and 0 <= sj < w * upx:
                canvas[:, :, i, j] = up_img[:, :, si, sj]

    # y[i, j] = sum_{a, b} canvas[i + fh-1 - a, j + fw-1 - b] * f[a, b]   (true convolution)
    fh, fw = f.shape
    ho, wo = hp - fh + 1, wp - fw + 1
    out = np.zeros((n, c, ho, wo))
    for a in range(fh):
        for b in range(fw):
            tap = f[fh - 1 - a, fw - 1 - b] if flip_filter else f[a, b]
            out += tap * canvas[:, :, fh - 1 - a: fh - 1 - a + ho, fw - 1 - b: fw - 1 - b + wo]
    return out[:, :, ::downy, ::downx] * gain


def _filters():
    rng = np.random.default_rng(1)
    return {
        "2d_3x2": torch.tensor(rng.standard_normal((3, 2)), dtype=torch.float32),  # fh=3, fw=2
        "sep_8": torch.tensor(rng.standard_normal(8), dtype=torch.float32),
        "none": None,
    }


FILTERS = _filters()
PADDINGS = [0, 2, [1, -1], [-1, 3, 2, 0]]


def _expand_pad(p):
    if isinstance(p, int):
        return (p, p, p, p)
    if len(p) == 2:
        return (p[0], p[0], p[1], p[1])
    return tuple(p)


@pytest.mark.parametrize("up,down", list(itertools.product([1, 2, 4], [1, 2, 4])))
@pytest.mark.parametrize("fname", list(FILTERS))
def test_upfirdn2d_matches_numpy(up, down, fname):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 9, dtype=torch.float64)
    f = FILTERS[fname]
    f2 = np.ones((1, 1)) if f is None else _as_2d(f.double().numpy())
    checked = 0
    for padding, flip, gain in itertools.product(PADDINGS, [False, True], [1, 3.0]):
        px0, px1, py0, py1 = _expand_pad(padding)
        if min(6 * up + py0 + py1, 9 * up + px0 + px1) < f2.shape[0]:
            continue  # the padded image is smaller than the filter
        checked += 1
        y = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl="ref")
        ref = np_upfirdn2d(x.numpy(), f2, (up, up), (down, down), _expand_pad(padding), flip, gain)
        assert y.shape == ref.shape
        np.testing.assert_allclose(y.numpy(), ref, rtol=1e-10, atol=1e-10)
    assert checked >= 4


@pytest.mark.parametrize("up,down", [([2, 1], [1, 1]), ([1, 4], [2, 1]), ([1, 1], [1, 2]), ([4, 2], [2, 4])])
def test_upfirdn2d_anisotropic_factors(up, down):
    torch.manual_seed(1)
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    f = FILTERS["2d_3x2"]
    y = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=[2, 1, 0, 3])
    ref = np_upfirdn2d(x.numpy(), f.double().numpy(), tuple(up), tuple(down), (2, 1, 0, 3))
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_upfirdn2d_is_true_convolution():
    # An impulse convolved with taps [1, 2, 3] reproduces them in order; flip_filter reverses them.
    x = torch.zeros(1, 1, 1, 5, dtype=torch.float64)
    x[..., 2] = 1
    f = torch.tensor([[1.0, 2.0, 3.0]])
    y = upfirdn2d.upfirdn2d(x, f, padding=[1, 1, 0, 0])
    assert y.flatten().tolist() == [0, 1, 2, 3, 0]
    y = upfirdn2d.upfirdn2d(x, f, padding=[1, 1, 0, 0], flip_filter=True)
    assert y.flatten().tolist() == [0, 3, 2, 1, 0]


def test_separable_equals_outer_product():
    torch.manual_seed(2)
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    f1 = FILTERS["sep_8"]
    a = upfirdn2d.upfirdn2d(x, f1, up=2, down=2, padding=[3, 4, 2, 5], gain=2.5)
    b = upfirdn2d.upfirdn2d(x, torch.outer(f1, f1), up=2, down=2, padding=[3, 4, 2, 5], gain=2.5)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_setup_filter_rules():
    f = upfirdn2d.setup_filter(None)
    assert f.dtype == torch.float32 and f.tolist() == [[1.0]]
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    expected = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64
    assert f.shape == (4, 4) and np.allclose(f.numpy(), expected)
    # Eight taps and up stay separable, normalised to sum 1 along the single axis.
    taps = np.arange(1, 9, dtype=np.float64)
    f = upfirdn2d.setup_filter(taps)
    assert f.shape == (8,) and np.allclose(f.numpy(), taps / taps.sum())
    assert upfirdn2d.setup_filter(taps[:7]).shape == (7, 7)
    assert upfirdn2d.setup_filter([1, 2], separable=True).shape == (2,)
    assert upfirdn2d.setup_filter(taps, separable=False).shape == (8, 8)
    # Gain is the 2-D filter's: gain**1 for 2-D, gain**0.5 per axis for 1-D.
    assert np.allclose(upfirdn2d.setup_filter([1, 3, 3, 1], gain=4).numpy(), 4 * expected)
    assert np.allclose(upfirdn2d.setup_filter(taps, gain=4).numpy(), 2 * taps / taps.sum())
    # No normalisation, flipping.
    assert upfirdn2d.setup_filter([[1, 2], [3, 4]], normalize=False).tolist() == [[1, 2], [3, 4]]
    assert upfirdn2d.setup_filter([[1, 2], [3, 4]], normalize=False, flip_filter=True).tolist() == [[4, 3], [2, 1]]
    assert upfirdn2d.setup_filter(5.0).tolist() == [[1.0]]


def test_parse_padding():
    assert upfirdn2d._parse_padding(3) == (3, 3, 3, 3)
    assert upfirdn2d._parse_padding([1, 2]) == (1, 1, 2, 2)
    assert upfirdn2d._parse_padding([1, 2, 3, 4]) == (1, 2, 3, 4)
    assert upfirdn2d._get_filter_size(None) == (1, 1)
    assert upfirdn2d._get_filter_size(torch.ones(3, 5)) == (5, 3)


@pytest.mark.parametrize("taps", [[1, 1], [1, 3, 3, 1], [1, 2, 1], [1, 2, 3, 4, 4, 3, 2, 1]])
def test_resample_wrappers_sizes_and_values(taps):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    f = upfirdn2d.setup_filter(taps)
    f2 = np.ones((1, 1)) if f is None else _as_2d(f.double().numpy())
    fh, fw = f2.shape

    y = upfirdn2d.filter2d(x, f)
    assert y.shape == x.shape
    ref = np_upfirdn2d(x.numpy(), f2, pad=(fw // 2, (fw - 1) // 2, fh // 2, (fh - 1) // 2))
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-6, atol=1e-6)

    y = upfirdn2d.upsample2d(x, f, up=2)
    assert y.shape == (2, 3, 16, 12)
    y4 = upfirdn2d.upsample2d(x, f, up=[4, 2])
    assert y4.shape == (2, 3, 16, 24)
    # Gain up**2 keeps a constant image constant away from the borders.
    flat = upfirdn2d.upsample2d(torch.ones(1, 1, 8, 8, dtype=torch.float64), f, up=2)
    np.testing.assert_allclose(flat[0, 0, 6:10, 6:10].numpy(), 1.0, rtol=1e-6)

    y = upfirdn2d.downsample2d(x, f, down=2)
    assert y.shape == (2, 3, 4, 3)
    assert upfirdn2d.downsample2d(torch.zeros(1, 1, 9, 7), f, down=[2, 3]).shape == (1, 1, 3, 3)
    flat = upfirdn2d.downsample2d(torch.ones(1, 1, 16, 16, dtype=torch.float64), f, down=2)
    np.testing.assert_allclose(flat[0, 0, 3:5, 3:5].numpy(), 1.0, rtol=1e-6)


def test_box_filter_wrappers_are_nearest_and_average():
    torch.manual_seed(4)
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    f = upfirdn2d.setup_filter([1, 1])
    torch.testing.assert_close(upfirdn2d.upsample2d(x, f), F.interpolate(x, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(upfirdn2d.downsample2d(x, f), F.avg_pool2d(x, 2))


def test_upfirdn2d_extra_padding_argument_of_wrappers():
    torch.manual_seed(5)
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    y = upfirdn2d.upsample2d(x, f, padding=[1, -1, 2, 0])
    ref = np_upfirdn2d(x.numpy(), f.double().numpy(), (2, 2), pad=(1 + 2, -1 + 1, 2 + 2, 0 + 1), gain=4)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_upfirdn2d_gradients():
    torch.manual_seed(6)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    for f in [upfirdn2d.setup_filter([1, 3, 3, 1]), FILTERS["sep_8"]]:
        fn = lambda t: upfirdn2d.upfirdn2d(t, f, up=2, down=2, padding=[2, 1, -1, 3], gain=2.0)  # noqa: E731
        assert torch.autograd.gradcheck(fn, [x])
        assert torch.autograd.gradgradcheck(fn, [x])


# ----------------------------------------------------------------------------
# filtered_lrelu


def np_filtered_lrelu(x, fu, fd, b, up, down, pad, gain, slope, clamp, flip):
    y = x + b[None, :, None, None] if b is not None else x
    y = np_upfirdn2d(y, fu, (up, up), pad=pad, flip_filter=flip, gain=up * up)
    y = np.where(y > 0, y, y * slope) * gain
    if clamp is not None:
        y = np.clip(y, -clamp, clamp)
    return np_upfirdn2d(y, fd, down=(down, down), flip_filter=flip)


@pytest.mark.parametrize("up,down,padding", [(1, 1, 6), (2, 2, 5), (4, 2, [3, 4, 2, 5]), (1, 2, [6, 7]), (2, 1, [-1, 12, 10, 0])])
@pytest.mark.parametrize("separable", [False, True])
def test_filtered_lrelu_matches_numpy(up, down, padding, separable):
    torch.manual_seed(7)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    rng = np.random.default_rng(3)
    if separable:
        fu = upfirdn2d.setup_filter(rng.random(8) + 0.1)
        fd = upfirdn2d.setup_filter(rng.random(10) + 0.1)
    else:
        fu = upfirdn2d.setup_filter(rng.random((4, 3)) + 0.1)
        fd = upfirdn2d.setup_filter(rng.random((2, 5)) + 0.1)
    for flip, clamp, gain, slope in [(False, None, np.sqrt(2), 0.2), (True, 0.5, 1.5, 0.0), (False, 2.0, 1.0, 0.3)]:
        y = filtered_lrelu.filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=padding, gain=gain, slope=slope,
                                          clamp=clamp, flip_filter=flip)
        ref = np_filtered_lrelu(x.numpy(), _as_2d(fu.double().numpy()), _as_2d(fd.double().numpy()), b.numpy(), up,
                                down, _expand_pad(padding), gain, slope, clamp, flip)
        assert y.shape == ref.shape and y.dtype == x.dtype
        np.testing.assert_allclose(y.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_filtered_lrelu_defaults_and_ref_alias():
    torch.manual_seed(8)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    y = filtered_lrelu.filtered_lrelu(x)
    torch.testing.assert_close(y, torch.where(x > 0, x, 0.2 * x) * np.sqrt(2))
    y2 = filtered_lrelu._filtered_lrelu_ref(x=x, fu=None, fd=None, b=None, up=1, down=1, padding=0)
    torch.testing.assert_close(y2, y)


def test_filtered_lrelu_gradcheck():
    torch.manual_seed(9)
    # With a fixed seed no filtered value lies within gradcheck's step of the kink at 0 or the clamp.
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fu = upfirdn2d.setup_filter([1, 3, 3, 1])
    fd = upfirdn2d.setup_filter(np.arange(1.0, 9.0))
    fn = lambda t, bb: filtered_lrelu.filtered_lrelu(t, fu, fd, bb, up=2, down=2, padding=[5, 6, 4, 5], clamp=0.15)  # noqa: E731
    unclamped = filtered_lrelu.filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=[5, 6, 4, 5])
    assert not torch.allclose(fn(x, b), unclamped)  # the clamp is exercised
    assert torch.autograd.gradcheck(fn, [x, b])
