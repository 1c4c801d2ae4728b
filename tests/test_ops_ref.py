"""bias_act, conv2d_resample, conv2d_gradfix, fma and grid_sample against closed forms,
naive compositions and autograd's numerical checks (float64, CPU)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import gan_refine  # noqa: F401  (installs the torch_utils alias)
from torch_utils.ops import _cuda, bias_act, conv2d_gradfix, conv2d_resample, fma, grid_sample_gradfix, upfirdn2d

SQRT2 = np.sqrt(2)
SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805

# name -> (closed form in numpy, default alpha, default gain)
CLOSED_FORMS = {
    "linear": (lambda x, a: x, 0, 1),
    "relu": (lambda x, a: np.maximum(x, 0), 0, SQRT2),
    "lrelu": (lambda x, a: np.where(x > 0, x, a * x), 0.2, SQRT2),
    "tanh": (lambda x, a: np.tanh(x), 0, 1),
    "sigmoid": (lambda x, a: 1 / (1 + np.exp(-x)), 0, 1),
    "elu": (lambda x, a: np.where(x > 0, x, np.expm1(x)), 0, 1),
    "selu": (lambda x, a: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(x)), 0, 1),
    "softplus": (lambda x, a: np.log1p(np.exp(x)), 0, 1),
    "swish": (lambda x, a: x / (1 + np.exp(-x)), 0, SQRT2),
}


def _away_from_zero(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return x + 0.2 * x.sign()  # keeps finite differences off the kinks at 0


def test_activation_table():
    funcs = bias_act.activation_funcs
    assert set(funcs) == set(CLOSED_FORMS)
    for i, name in enumerate(["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"]):
        spec = funcs[name]
        _, alpha, gain = CLOSED_FORMS[name]
        assert spec.cuda_idx == i + 1
        assert spec.def_alpha == alpha and np.isclose(spec.def_gain, gain)
        assert spec.has_2nd_grad == (name not in ("linear", "relu", "lrelu"))
        assert hasattr(spec, "ref")


@pytest.mark.parametrize("act", list(CLOSED_FORMS))
def test_bias_act_closed_forms(act):
    closed, def_alpha, def_gain = CLOSED_FORMS[act]
    x = _away_from_zero([2, 3, 4, 5], 0)
    b = torch.linspace(-0.5, 0.5, 3, dtype=torch.float64)
    pre = x.numpy() + b.numpy()[None, :, None, None]
    y = bias_act.bias_act(x, b, act=act)
    np.testing.assert_allclose(y.numpy(), closed(pre, def_alpha) * def_gain, rtol=1e-12, atol=1e-12)

    # Bias along another dimension, explicit alpha and gain, clamp.
    b2 = torch.linspace(-1, 1, 5, dtype=torch.float64)
    pre = x.numpy() + b2.numpy()[None, None, None, :]
    y = bias_act.bias_act(x, b2, dim=3, act=act, alpha=0.3, gain=2.5, clamp=0.7)
    expected = np.clip(closed(pre, 0.3) * 2.5, -0.7, 0.7)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)

    # No bias; a negative clamp means no clamping.
    y = bias_act.bias_act(x, act=act, gain=3.0, clamp=-1)
    np.testing.assert_allclose(y.numpy(), closed(x.numpy(), def_alpha) * 3.0, rtol=1e-12, atol=1e-12)


def test_bias_act_2d_input_and_errors():
    x = _away_from_zero([4, 6], 1)
    b = torch.arange(6, dtype=torch.float64)
    torch.testing.assert_close(bias_act.bias_act(x, b, act="relu"), F.relu(x + b) * SQRT2)
    with pytest.raises(AssertionError):
        bias_act.bias_act(x, torch.zeros(4, dtype=torch.float64))  # wrong length for dim 1
    with pytest.raises(AssertionError):
        bias_act.bias_act(x, impl="triton")
    with pytest.raises(AssertionError):
        bias_act.bias_act(x, act="gelu")


def test_bias_act_clamp_gradient_is_zero_where_clamped():
    x = _away_from_zero([3, 4, 5], 2).requires_grad_()
    b = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    clamp = 0.5
    y = bias_act.bias_act(x, b, act="lrelu", clamp=clamp)
    (gx, gb) = torch.autograd.grad(y.sum(), [x, b])
    pre = x.detach()
    slope = torch.where(pre > 0, 1.0, 0.2) * SQRT2
    active = (slope * pre).abs() > clamp
    assert active.any() and (~active).any()
    expected = torch.where(active, torch.zeros_like(pre), slope)
    torch.testing.assert_close(gx, expected)
    torch.testing.assert_close(gb, expected.sum([0, 2]))


@pytest.mark.parametrize("act", list(CLOSED_FORMS))
def test_bias_act_gradcheck(act):
    x = _away_from_zero([2, 3, 2, 2], 3).requires_grad_()
    b = (0.01 * torch.randn(3, dtype=torch.float64)).requires_grad_()
    # The clamp level sits between output values so that both regimes are exercised.
    fn = lambda t, bb: bias_act.bias_act(t, bb, act=act, alpha=0.25, gain=1.7, clamp=1.1)  # noqa: E731
    assert gradcheck(fn, [x, b])
    assert gradgradcheck(fn, [x, b])


# ----------------------------------------------------------------------------
# conv2d_resample


def _naive_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    """The definition: upsample (with padding), plain convolution, downsample."""
    fw, fh = (1, 1) if f is None else (f.shape[-1], f.shape[0])
    px0, px1, py0, py1 = upfirdn2d._parse_padding(padding)
    if up > 1:  # centre the filter like upsample2d()
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:  # ... and like downsample2d()
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    y = upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up ** 2,
                            flip_filter=flip_filter, impl="ref")
    y = F.conv2d(y, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        y = upfirdn2d.upfirdn2d(y, f, down=down, flip_filter=flip_filter, impl="ref")
    return y


CONV_CASES = [
    # (up, down, kernel (kh, kw), padding, groups)
    (1, 1, (3, 3), 1, 1), (1, 1, (3, 2), [2, 0, 1, 1], 1), (1, 1, (1, 1), 0, 2),
    (2, 1, (3, 3), 1, 1), (2, 1, (3, 3), 1, 2), (2, 1, (1, 1), 0, 1), (4, 1, (2, 3), [1, 2, 0, 3], 1),
    (1, 2, (3, 3), 1, 1), (1, 2, (3, 3), [0, 1, 2, 1], 2), (1, 2, (1, 1), 0, 1), (1, 4, (2, 3), 0, 1),
    (2, 2, (3, 3), 1, 1), (2, 2, (1, 1), 0, 2), (4, 2, (3, 2), [1, -1, 2, 0], 1),
]


@pytest.mark.parametrize("up,down,kernel,padding,groups", CONV_CASES)
@pytest.mark.parametrize("filter_kind", ["2d", "separable", "none"])
def test_conv2d_resample_matches_naive(up, down, kernel, padding, groups, filter_kind):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 7, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, *kernel, dtype=torch.float64)
    f = {"2d": upfirdn2d.setup_filter([[1, 2, 1, 3], [2, 5, 1, 1], [0, 1, 2, 1]]),
         "separable": upfirdn2d.setup_filter([1, 2, 3, 5, 5, 3, 2, 1]),
         "none": None}[filter_kind]
    for flip_weight in (True, False):
        for flip_filter in (False, True):
            y = conv2d_resample.conv2d_resample(x, w, f, up=up, down=down, padding=padding, groups=groups,
                                                flip_weight=flip_weight, flip_filter=flip_filter)
            ref = _naive_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter)
            assert y.shape == ref.shape
            torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-9)


def test_conv2d_resample_plain_is_conv2d():
    torch.manual_seed(1)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(conv2d_resample.conv2d_resample(x, w, padding=1), F.conv2d(x, w, padding=1))
    # flip_weight=False is a true convolution: the same as correlating with the flipped kernel.
    torch.testing.assert_close(conv2d_resample.conv2d_resample(x, w, padding=1, flip_weight=False),
                               F.conv2d(x, w.flip([2, 3]), padding=1))
    # A 1x1 kernel commutes with resampling, so up/down equal upsample2d/downsample2d then conv.
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    w1 = torch.randn(2, 3, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(conv2d_resample.conv2d_resample(x, w1, f, up=2),
                               F.conv2d(upfirdn2d.upsample2d(x, f), w1))
    torch.testing.assert_close(conv2d_resample.conv2d_resample(x, w1, f, down=2),
                               F.conv2d(upfirdn2d.downsample2d(x, f), w1))


# ----------------------------------------------------------------------------
# conv2d_gradfix


@pytest.fixture
def gradfix_enabled(monkeypatch):
    monkeypatch.setattr(conv2d_gradfix, "enabled", True)


@pytest.mark.parametrize("transpose", [False, True])
def test_conv2d_gradfix_gradcheck(gradfix_enabled, transpose):
    torch.manual_seed(2)
    x = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    if transpose:
        w = torch.randn(4, 1, 2, 2, dtype=torch.float64, requires_grad=True)
        b = torch.randn(2, dtype=torch.float64, requires_grad=True)
        fn = lambda t, ww, bb: conv2d_gradfix.conv_transpose2d(t, ww, bb, stride=2, padding=[1, 0],  # noqa: E731
                                                               output_padding=1, groups=2)
        ref = F.conv_transpose2d(x, w, b, stride=2, padding=[1, 0], output_padding=1, groups=2)
    else:
        w = torch.randn(2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
        b = torch.randn(2, dtype=torch.float64, requires_grad=True)
        fn = lambda t, ww, bb: conv2d_gradfix.conv2d(t, ww, bb, stride=[2, 1], padding=1, dilation=[1, 2],  # noqa: E731
                                                     groups=2)
        ref = F.conv2d(x, w, b, stride=[2, 1], padding=1, dilation=[1, 2], groups=2)
    y = fn(x, w, b)
    assert type(y.grad_fn).__name__.startswith("_Convolution")  # the custom op ran
    torch.testing.assert_close(y, ref)
    assert gradcheck(fn, [x, w, b])
    assert gradgradcheck(fn, [x, w, b])


def test_conv2d_gradfix_disabled_is_plain(monkeypatch):
    monkeypatch.setattr(conv2d_gradfix, "enabled", False)
    x = torch.randn(1, 2, 4, 4)
    w = torch.randn(3, 2, 3, 3)
    torch.testing.assert_close(conv2d_gradfix.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1))
    torch.testing.assert_close(conv2d_gradfix.conv2d(x, w, padding="same"), F.conv2d(x, w, padding=1))


def test_no_weight_gradients_flag_nesting():
    assert not conv2d_gradfix.weight_gradients_disabled
    with conv2d_gradfix.no_weight_gradients():
        assert conv2d_gradfix.weight_gradients_disabled
        with conv2d_gradfix.no_weight_gradients(False):
            assert conv2d_gradfix.weight_gradients_disabled  # False never re-enables
    assert not conv2d_gradfix.weight_gradients_disabled
    with conv2d_gradfix.no_weight_gradients(False):
        assert not conv2d_gradfix.weight_gradients_disabled


@pytest.mark.parametrize("transpose", [False, True])
def test_no_weight_gradients_skips_weight_only(gradfix_enabled, transpose):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    op, ref_op = ((conv2d_gradfix.conv_transpose2d, F.conv_transpose2d) if transpose
                  else (conv2d_gradfix.conv2d, lambda t, ww, bb, **kw: F.conv2d(t, ww.transpose(0, 1), bb, **kw)))
    ww = w if transpose else w.detach().transpose(0, 1).contiguous().requires_grad_()
    # Reference gradients from plain PyTorch.
    gx_ref, gb_ref = torch.autograd.grad(ref_op(x, w, b, padding=1).square().sum(), [x, b])

    with conv2d_gradfix.no_weight_gradients():
        op(x, ww, b, padding=1).square().sum().backward()
    assert ww.grad is None
    torch.testing.assert_close(x.grad, gx_ref)
    torch.testing.assert_close(b.grad, gb_ref)

    # Outside the block the weight gradient is back.
    x.grad = None
    op(x, ww, b, padding=1).square().sum().backward()
    assert ww.grad is not None


def test_no_weight_gradients_r1_pattern(gradfix_enabled):
    # R1: differentiate w.r.t. the input with create_graph, then penalise that gradient. The
    # weights still get the exact second-order gradient of the penalty.
    torch.manual_seed(4)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)

    def net(conv, t):
        return conv(torch.tanh(conv(t, w1, padding=1)), w2).sum()

    (g,) = torch.autograd.grad(net(F.conv2d, x), [x], create_graph=True)
    ref = torch.autograd.grad(g.square().sum(), [w1, w2])

    out = net(conv2d_gradfix.conv2d, x)
    with conv2d_gradfix.no_weight_gradients():
        (g,) = torch.autograd.grad(out, [x], create_graph=True)
    got = torch.autograd.grad(g.square().sum(), [w1, w2])
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------
# fma


def test_fma_values_and_broadcast_gradients():
    torch.manual_seed(5)
    a = torch.randn(2, 3, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = fma.fma(a, b, c)
    an, bn, cn = (t.detach().numpy() for t in (a, b, c))
    np.testing.assert_allclose(y.detach().numpy(), an * bn + cn)
    g = torch.randn(2, 3, 4, dtype=torch.float64)
    ga, gb, gc = torch.autograd.grad(y, [a, b, c], g)
    gn = g.numpy()
    np.testing.assert_allclose(ga.numpy(), (gn * bn).sum(axis=2, keepdims=True))
    np.testing.assert_allclose(gb.numpy(), (gn * an).sum(axis=0, keepdims=True))
    np.testing.assert_allclose(gc.numpy(), gn.sum(axis=(0, 1)))
    assert gradcheck(fma.fma, [a, b, c])
    assert gradgradcheck(fma.fma, [a, b, c])


# ----------------------------------------------------------------------------
# grid_sample


def _bilinear_by_hand(img, gx, gy):
    """Sample img [C, H, W] at one normalised point; align_corners=False, zeros outside."""
    _, h, w = img.shape
    ix = ((gx + 1) * w - 1) / 2  # -1 is the left edge of pixel 0, +1 the right edge of pixel w-1
    iy = ((gy + 1) * h - 1) / 2
    x0, y0 = int(np.floor(ix)), int(np.floor(iy))
    out = np.zeros(img.shape[0])
    for yy, wy in ((y0, 1 - (iy - y0)), (y0 + 1, iy - y0)):
        for xx, wx in ((x0, 1 - (ix - x0)), (x0 + 1, ix - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx]
    return out


def test_grid_sample_bilinear_by_hand():
    torch.manual_seed(6)
    img = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    points = [(-1.0, -1.0), (0.0, 0.0), (0.37, -0.81), (0.99, 0.9), (1.2, -0.1), (-1.3, 1.4), (-0.6, 0.25)]
    grid = torch.tensor(points, dtype=torch.float64).reshape(1, 1, -1, 2)
    y = grid_sample_gradfix.grid_sample(img, grid)
    for k, (gx, gy) in enumerate(points):
        np.testing.assert_allclose(y[0, :, 0, k].numpy(), _bilinear_by_hand(img[0].numpy(), gx, gy), atol=1e-12)
    # The centre of pixel (row 1, column 2) is at x = (2 * 2 + 1) / 5 - 1, y = (2 * 1 + 1) / 4 - 1.
    centre = torch.tensor([[[[0.0, -0.25]]]], dtype=torch.float64)
    torch.testing.assert_close(grid_sample_gradfix.grid_sample(img, centre)[0, :, 0, 0], img[0, :, 1, 2])


@pytest.mark.parametrize("flag", [False, True])
def test_grid_sample_double_backward(monkeypatch, flag):
    monkeypatch.setattr(grid_sample_gradfix, "enabled", flag)
    torch.manual_seed(7)
    img = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    grid = (torch.rand(1, 2, 3, 2, dtype=torch.float64) * 2.2 - 1.1).requires_grad_()
    assert gradcheck(grid_sample_gradfix.grid_sample, [img, grid])
    assert gradgradcheck(grid_sample_gradfix.grid_sample, [img, grid])


# ----------------------------------------------------------------------------
# The CUDA seam: what each op hands to the kernel module when it is chosen.


def test_cuda_dispatch_arguments(monkeypatch):
    calls = {}
    monkeypatch.setattr(_cuda, "use_cuda", lambda op, impl, x: impl == "cuda")
    monkeypatch.setattr(_cuda, "bias_act", lambda *a: calls.setdefault("bias_act", a), raising=False)
    monkeypatch.setattr(_cuda, "upfirdn2d", lambda *a: calls.setdefault("upfirdn2d", a), raising=False)
    monkeypatch.setattr(_cuda, "filtered_lrelu", lambda *a: calls.setdefault("filtered_lrelu", a), raising=False)
    x = torch.randn(1, 2, 4, 4)

    bias_act.bias_act(x, None, act="lrelu", clamp=256)
    assert calls["bias_act"][1:] == (None, 1, "lrelu", 0.2, float(SQRT2), 256.0)
    assert all(type(v) is float for v in calls["bias_act"][4:])

    upfirdn2d.upfirdn2d(x, None, up=[2, 1], down=2, padding=[1, 2], flip_filter=True, gain=4)
    args = calls["upfirdn2d"]
    assert args[1].tolist() == [[1.0]] and args[1].dtype == torch.float32
    assert args[2:] == (2, 1, 2, 2, 1, 1, 2, 2, True, 4.0)

    from torch_utils.ops import filtered_lrelu
    filtered_lrelu.filtered_lrelu(x, None, None, None, up=2, down=2, padding=[1, 2, 3, 4], clamp=10)
    assert calls["filtered_lrelu"][1:] == (None, None, None, 2, 2, 1, 2, 3, 4, float(SQRT2), 0.2, 10.0, False)

    # impl='ref' never reaches the seam.
    calls.clear()
    torch.testing.assert_close(bias_act.bias_act(x, act="relu", impl="ref"), F.relu(x) * float(SQRT2))
    assert not calls
