"""The compat layer against the documented behaviour of upstream dnnlib/torch_utils.

Network code embedded in StyleGAN2-ADA / StyleGAN3 / EDM pickles calls these functions by
keyword and relies on their exact numerics, so this file pins: call signatures (names, order,
defaults), the module-level names that code touches, and the op semantics, each against a
float64 NumPy evaluation of the definition (zero insertion, padding order, true convolution,
gain placement, clamp order), never against the code under test.
"""

import hashlib
import http.server
import importlib
import inspect
import os
import pickle
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import gan_refine  # noqa: F401  (installs the dnnlib / torch_utils aliases)
import dnnlib
from dnnlib import util
from torch_utils import misc, persistence
from torch_utils.ops import (bias_act, conv2d_gradfix, conv2d_resample, filtered_lrelu, fma,
                             grid_sample_gradfix, upfirdn2d)

SQRT2 = float(np.sqrt(2))

# ----------------------------------------------------------------------------
# Signatures: upstream network code passes most arguments by keyword.

_CPU = torch.device("cpu")
SIGNATURES = [
    (lambda: upfirdn2d.setup_filter, [("f", inspect.Parameter.empty), ("device", _CPU), ("normalize", True),
                                      ("flip_filter", False), ("gain", 1), ("separable", None)]),
    (lambda: upfirdn2d.upfirdn2d, [("x", inspect.Parameter.empty), ("f", inspect.Parameter.empty), ("up", 1),
                                   ("down", 1), ("padding", 0), ("flip_filter", False), ("gain", 1), ("impl", "cuda")]),
    (lambda: upfirdn2d._upfirdn2d_ref, [("x", inspect.Parameter.empty), ("f", inspect.Parameter.empty), ("up", 1),
                                        ("down", 1), ("padding", 0), ("flip_filter", False), ("gain", 1)]),
    (lambda: upfirdn2d.filter2d, [("x", inspect.Parameter.empty), ("f", inspect.Parameter.empty), ("padding", 0),
                                  ("flip_filter", False), ("gain", 1), ("impl", "cuda")]),
    (lambda: upfirdn2d.upsample2d, [("x", inspect.Parameter.empty), ("f", inspect.Parameter.empty), ("up", 2),
                                    ("padding", 0), ("flip_filter", False), ("gain", 1), ("impl", "cuda")]),
    (lambda: upfirdn2d.downsample2d, [("x", inspect.Parameter.empty), ("f", inspect.Parameter.empty), ("down", 2),
                                      ("padding", 0), ("flip_filter", False), ("gain", 1), ("impl", "cuda")]),
    (lambda: bias_act.bias_act, [("x", inspect.Parameter.empty), ("b", None), ("dim", 1), ("act", "linear"),
                                 ("alpha", None), ("gain", None), ("clamp", None), ("impl", "cuda")]),
    (lambda: bias_act._bias_act_ref, [("x", inspect.Parameter.empty), ("b", None), ("dim", 1), ("act", "linear"),
                                      ("alpha", None), ("gain", None), ("clamp", None)]),
    (lambda: conv2d_resample.conv2d_resample, [("x", inspect.Parameter.empty), ("w", inspect.Parameter.empty),
                                               ("f", None), ("up", 1), ("down", 1), ("padding", 0), ("groups", 1),
                                               ("flip_weight", True), ("flip_filter", False)]),
    (lambda: filtered_lrelu.filtered_lrelu, [("x", inspect.Parameter.empty), ("fu", None), ("fd", None), ("b", None),
                                             ("up", 1), ("down", 1), ("padding", 0), ("gain", SQRT2), ("slope", 0.2),
                                             ("clamp", None), ("flip_filter", False), ("impl", "cuda")]),
    (lambda: filtered_lrelu._filtered_lrelu_ref, [("x", inspect.Parameter.empty), ("fu", None), ("fd", None),
                                                  ("b", None), ("up", 1), ("down", 1), ("padding", 0),
                                                  ("gain", SQRT2), ("slope", 0.2), ("clamp", None),
                                                  ("flip_filter", False)]),
    (lambda: conv2d_gradfix.conv2d, [("input", inspect.Parameter.empty), ("weight", inspect.Parameter.empty),
                                     ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)]),
    (lambda: conv2d_gradfix.conv_transpose2d, [("input", inspect.Parameter.empty), ("weight", inspect.Parameter.empty),
                                               ("bias", None), ("stride", 1), ("padding", 0), ("output_padding", 0),
                                               ("groups", 1), ("dilation", 1)]),
    (lambda: conv2d_gradfix.no_weight_gradients, [("disable", True)]),
    (lambda: fma.fma, [("a", inspect.Parameter.empty), ("b", inspect.Parameter.empty), ("c", inspect.Parameter.empty)]),
    (lambda: grid_sample_gradfix.grid_sample, [("input", inspect.Parameter.empty), ("grid", inspect.Parameter.empty)]),
    (lambda: misc.constant, [("value", inspect.Parameter.empty), ("shape", None), ("dtype", None), ("device", None),
                             ("memory_format", None)]),
    (lambda: misc.assert_shape, [("tensor", inspect.Parameter.empty), ("ref_shape", inspect.Parameter.empty)]),
    (lambda: misc.copy_params_and_buffers, [("src_module", inspect.Parameter.empty),
                                            ("dst_module", inspect.Parameter.empty), ("require_all", False)]),
    (lambda: misc.print_module_summary, [("module", inspect.Parameter.empty), ("inputs", inspect.Parameter.empty),
                                         ("max_nesting", 3), ("skip_redundant", True)]),
    (lambda: misc.check_ddp_consistency, [("module", inspect.Parameter.empty), ("ignore_regex", None)]),
    (lambda: misc.ddp_sync, [("module", inspect.Parameter.empty), ("sync", inspect.Parameter.empty)]),
    (lambda: misc.InfiniteSampler, [("dataset", inspect.Parameter.empty), ("rank", 0), ("num_replicas", 1),
                                    ("shuffle", True), ("seed", 0), ("window_size", 0.5)]),
    (lambda: util.Logger, [("file_name", None), ("file_mode", "w"), ("should_flush", True)]),
    (lambda: util.make_cache_dir_path, [("paths", inspect.Parameter.empty)]),
]


@pytest.mark.parametrize("getter,expected", SIGNATURES, ids=[str(i) for i in range(len(SIGNATURES))])
def test_signatures_match_upstream(getter, expected):
    params = list(inspect.signature(getter()).parameters.values())
    got = [(p.name, p.default) for p in params][:len(expected)]
    assert [name for name, _ in got] == [name for name, _ in expected]
    for (name, default), (_, want) in zip(got, expected):
        if isinstance(want, float):
            assert default == pytest.approx(want, rel=1e-12), name
        else:
            assert default == want, name


def test_open_url_leading_parameters():
    params = list(inspect.signature(util.open_url).parameters.values())[:6]
    assert [(p.name, p.default) for p in params][1:] == [
        ("cache_dir", None), ("num_attempts", 10), ("verbose", True), ("return_filename", False), ("cache", True)]
    assert params[0].name == "url"


MODULE_NAMES = {
    misc: ["constant", "nan_to_num", "symbolic_assert", "suppress_tracer_warnings", "assert_shape",
           "profiled_function", "InfiniteSampler", "params_and_buffers", "named_params_and_buffers",
           "copy_params_and_buffers", "ddp_sync", "check_ddp_consistency", "print_module_summary"],
    upfirdn2d: ["setup_filter", "upfirdn2d", "filter2d", "upsample2d", "downsample2d", "_parse_scaling",
                "_parse_padding", "_get_filter_size", "_upfirdn2d_ref", "_init", "_plugin"],
    bias_act: ["activation_funcs", "bias_act", "_bias_act_ref", "_init", "_plugin"],
    conv2d_resample: ["conv2d_resample", "_get_weight_shape", "_conv2d_wrapper"],
    conv2d_gradfix: ["enabled", "weight_gradients_disabled", "no_weight_gradients", "conv2d", "conv_transpose2d"],
    grid_sample_gradfix: ["enabled", "grid_sample"],
    filtered_lrelu: ["filtered_lrelu", "_filtered_lrelu_ref", "_get_filter_size", "_parse_padding", "_init",
                     "_plugin"],
    fma: ["fma"],
    persistence: ["persistent_class", "is_persistent", "import_hook", "_reconstruct_persistent_obj", "_version",
                  "_decorators", "_import_hooks", "_module_to_src", "_src_to_module", "_check_pickleable"],
    util: ["EasyDict", "Logger", "set_cache_dir", "make_cache_dir_path", "format_time", "format_time_brief",
           "ask_yes_no", "tuple_product", "get_dtype_and_ctype", "is_pickleable", "get_module_from_obj_name",
           "get_obj_from_module", "get_obj_by_name", "call_func_by_name", "construct_class_by_name",
           "get_module_dir_by_obj_name", "is_top_level_function", "get_top_level_function_name",
           "list_dir_recursively_with_ignore", "copy_files_and_create_dirs", "is_url", "open_url"],
}


@pytest.mark.parametrize("module", list(MODULE_NAMES), ids=lambda m: m.__name__)
def test_module_level_names(module):
    missing = [name for name in MODULE_NAMES[module] if not hasattr(module, name)]
    assert not missing
    assert dnnlib.EasyDict is util.EasyDict and callable(dnnlib.make_cache_dir_path)


def test_activation_table_defaults():
    # (def_alpha, def_gain, cuda_idx, ref, has_2nd_grad) as listed upstream.
    table = {"linear": (0, 1, 1, "", False), "relu": (0, SQRT2, 2, "y", False), "lrelu": (0.2, SQRT2, 3, "y", False),
             "tanh": (0, 1, 4, "y", True), "sigmoid": (0, 1, 5, "y", True), "elu": (0, 1, 6, "y", True),
             "selu": (0, 1, 7, "y", True), "softplus": (0, 1, 8, "y", True), "swish": (0, SQRT2, 9, "x", True)}
    assert set(bias_act.activation_funcs) == set(table)
    for name, (alpha, gain, idx, ref, second) in table.items():
        spec = bias_act.activation_funcs[name]
        assert (spec.def_alpha, spec.cuda_idx, spec.ref, spec.has_2nd_grad) == (alpha, idx, ref, second), name
        assert float(spec.def_gain) == pytest.approx(gain, rel=1e-12), name


@pytest.mark.parametrize("op", [bias_act, upfirdn2d, filtered_lrelu], ids=lambda m: m.__name__)
def test_plugin_init_hook(op, monkeypatch):
    # Training and pre-compilation scripts call `<op>._init()` and read `<op>._plugin`.
    from torch_utils.ops import _cuda
    name = op.__name__.rsplit(".", 1)[-1]
    asked = []

    def fake_plugin(plugin_name):
        asked.append(plugin_name)
        return f"module:{plugin_name}"

    monkeypatch.setattr(op, "_plugin", None)
    monkeypatch.setattr(_cuda, "plugin", fake_plugin)
    assert op._init() is True and op._plugin == f"module:{name}"
    assert asked == list(_cuda.OP_PLUGINS[name])

    def broken_plugin(plugin_name):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(op, "_plugin", None)
    monkeypatch.setattr(_cuda, "plugin", broken_plugin)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        assert op._init() is False
    assert op._plugin is None


# ----------------------------------------------------------------------------
# float64 NumPy references, written from the definitions.

def np_upfirdn(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), gain=1.0, flip=False):
    """x [N,C,H,W]; f 1-D (separable: outer product) or 2-D; pad = [x0, x1, y0, y1]."""
    x = np.asarray(x, np.float64)
    f = np.asarray(f, np.float64)
    f2 = np.outer(f, f) if f.ndim == 1 else f
    f2 = f2 * gain
    n, c, h, w = x.shape
    ux, uy = up
    z = np.zeros([n, c, h * uy, w * ux])
    z[:, :, ::uy, ::ux] = x
    x0, x1, y0, y1 = pad
    z = np.pad(z, [(0, 0), (0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))])
    z = z[:, :, max(-y0, 0): z.shape[2] - max(-y1, 0), max(-x0, 0): z.shape[3] - max(-x1, 0)]
    fh, fw = f2.shape
    k = f2 if flip else f2[::-1, ::-1]  # true convolution = correlation with the flipped taps
    oh, ow = z.shape[2] - fh + 1, z.shape[3] - fw + 1
    out = np.zeros([n, c, oh, ow])
    for a in range(fh):
        for b in range(fw):
            out += z[:, :, a:a + oh, b:b + ow] * k[a, b]
    return out[:, :, ::down[1], ::down[0]]


def np_correlate(x, w, groups=1):
    """Valid grouped cross-correlation (what torch's conv2d computes)."""
    n, cin, h, wd = x.shape
    cout, cpg, kh, kw = w.shape
    opg = cout // groups
    oh, ow = h - kh + 1, wd - kw + 1
    out = np.zeros([n, cout, oh, ow])
    for o in range(cout):
        g = o // opg
        for ci in range(cpg):
            for a in range(kh):
                for b in range(kw):
                    out[:, o] += x[:, g * cpg + ci, a:a + oh, b:b + ow] * w[o, ci, a, b]
    return out


def t64(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


# ----------------------------------------------------------------------------
# upfirdn2d and friends.

def test_setup_filter_closed_forms():
    f = upfirdn2d.setup_filter([1, 3, 3, 1], gain=4)  # < 8 taps: becomes the 2-D outer product
    assert f.dtype == torch.float32 and f.shape == (4, 4)
    np.testing.assert_allclose(f.numpy(), np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64 * 4, rtol=1e-6)
    taps = np.arange(1, 9, dtype=np.float64)
    f = upfirdn2d.setup_filter(taps, gain=9)  # 8 taps: stays separable, sqrt(gain) per axis
    np.testing.assert_allclose(f.numpy(), taps / taps.sum() * 3, rtol=1e-6)
    asym = np.array([[1.0, 2.0], [3.0, 5.0]])
    f = upfirdn2d.setup_filter(asym, flip_filter=True, normalize=False)
    np.testing.assert_allclose(f.numpy(), asym[::-1, ::-1])
    np.testing.assert_allclose(upfirdn2d.setup_filter(None, gain=2).numpy(), [[2.0]])
    np.testing.assert_allclose(upfirdn2d.setup_filter([1, 2], separable=True).numpy(), [1 / 3, 2 / 3], rtol=1e-6)
    caller_taps = torch.tensor([1.0, 1.0, 2.0, 4.0, 1.0, 1.0, 1.0, 1.0])
    upfirdn2d.setup_filter(caller_taps)
    assert caller_taps.tolist() == [1.0, 1.0, 2.0, 4.0, 1.0, 1.0, 1.0, 1.0]  # the caller's tensor is untouched


@pytest.mark.parametrize("case", [
    dict(up=[2, 1], down=[1, 2], padding=[3, 0, -1, 2], flip_filter=False, gain=2.5, sep=False),
    dict(up=3, down=1, padding=[2, 1], flip_filter=True, gain=1.0, sep=False),
    dict(up=1, down=2, padding=2, flip_filter=False, gain=1.0, sep=True),
])
def test_upfirdn2d_definition(case):
    rng = np.random.default_rng(0)
    x = rng.standard_normal([2, 3, 6, 5])
    f = rng.standard_normal([5]) if case["sep"] else rng.standard_normal([3, 4])  # asymmetric, non-square
    up = case["up"] if isinstance(case["up"], list) else [case["up"]] * 2
    down = case["down"] if isinstance(case["down"], list) else [case["down"]] * 2
    p = case["padding"]
    pad = [p] * 4 if isinstance(p, int) else (p if len(p) == 4 else [p[0], p[0], p[1], p[1]])
    got = upfirdn2d.upfirdn2d(t64(x), torch.as_tensor(f, dtype=torch.float32), up=case["up"], down=case["down"],
                              padding=p, flip_filter=case["flip_filter"], gain=case["gain"])
    want = np_upfirdn(x, np.float32(f), up=up, down=down, pad=pad, gain=case["gain"], flip=case["flip_filter"])
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_upfirdn2d_float16_taps_rounded_once():
    # For a float16 input the gain multiplies the float32 taps before they are cast: one rounding.
    tap, gain = None, None
    for cand in np.linspace(0.1, 0.9, 401):
        for g in (3.0, 5.0, 7.0):
            once = np.float16(np.float32(np.float32(cand) * np.float32(g)))
            twice = np.float16(np.float32(np.float16(np.float32(cand))) * np.float32(g))
            if once != twice:
                tap, gain = float(np.float32(cand)), g
                break
        if tap is not None:
            break
    assert tap is not None
    f = torch.tensor([[tap]], dtype=torch.float32)
    x = torch.ones([1, 1, 1, 1], dtype=torch.float16)
    y = upfirdn2d.upfirdn2d(x, f, gain=gain, impl="ref")
    assert y.dtype == torch.float16
    assert float(y) == float(np.float16(np.float32(np.float32(tap) * np.float32(gain))))


@pytest.mark.parametrize("fw,fh", [(4, 4), (3, 5), (1, 1), (6, 2)])
@pytest.mark.parametrize("factor", [2, 3])
def test_resample_wrapper_padding_formulas(fw, fh, factor):
    rng = np.random.default_rng(fw * 10 + fh)
    x = rng.standard_normal([1, 2, 6, 9])
    f = np.float32(rng.standard_normal([fh, fw]))
    ft = torch.as_tensor(f)
    got = upfirdn2d.upsample2d(t64(x), ft, up=factor, padding=[1, 0, 0, 2])
    pad = [1 + (fw + factor - 1) // 2, (fw - factor) // 2, (fh + factor - 1) // 2, 2 + (fh - factor) // 2]
    np.testing.assert_allclose(got.numpy(), np_upfirdn(x, f, up=[factor] * 2, pad=pad, gain=factor ** 2), atol=1e-9)
    got = upfirdn2d.downsample2d(t64(x), ft, down=factor, padding=[0, 1, 1, 0])
    pad = [(fw - factor + 1) // 2, 1 + (fw - factor) // 2, 1 + (fh - factor + 1) // 2, (fh - factor) // 2]
    np.testing.assert_allclose(got.numpy(), np_upfirdn(x, f, down=[factor] * 2, pad=pad), atol=1e-9)
    got = upfirdn2d.filter2d(t64(x), ft, padding=1, gain=3)
    pad = [1 + fw // 2, 1 + (fw - 1) // 2, 1 + fh // 2, 1 + (fh - 1) // 2]
    np.testing.assert_allclose(got.numpy(), np_upfirdn(x, f, pad=pad, gain=3), atol=1e-9)


# ----------------------------------------------------------------------------
# conv2d_resample: convolution with up/down-sampling, padding once at the start.

def np_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight):
    f = np.asarray(f, np.float64)
    f2 = np.outer(f, f) if f.ndim == 1 else f
    fh, fw = f2.shape
    px0, px1, py0, py1 = padding
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
    if up > 1:
        x = np_upfirdn(x, f2, up=[up, up], pad=[px0, px1, py0, py1], gain=up ** 2)
    else:
        x = np_upfirdn(x, [[1.0]], pad=[px0, px1, py0, py1])
    x = np_correlate(x, w if flip_weight else w[:, :, ::-1, ::-1], groups)
    if down > 1:
        x = np_upfirdn(x, f2, down=[down, down])
    return x


@pytest.mark.parametrize("case", [
    dict(up=2, down=1, k=3, padding=[1, 1, 1, 1], groups=1, flip_weight=False, taps=[1, 3, 3, 1]),
    dict(up=2, down=1, k=3, padding=[2, 0, 0, 1], groups=2, flip_weight=True, taps=[1, 2, 1]),
    dict(up=2, down=1, k=1, padding=[0, 0, 0, 0], groups=1, flip_weight=True, taps=[1, 3, 3, 1]),
    dict(up=1, down=2, k=3, padding=[1, 1, 1, 1], groups=1, flip_weight=True, taps=[1, 3, 3, 1]),
    dict(up=1, down=2, k=1, padding=[0, 0, 0, 0], groups=1, flip_weight=False, taps=[1, 2, 1]),
    dict(up=1, down=2, k=2, padding=[1, 0, 0, 1], groups=2, flip_weight=False, taps=[1, 2, 1]),
    dict(up=2, down=2, k=3, padding=[1, 1, 1, 1], groups=1, flip_weight=False, taps=[1, 3, 3, 1]),
    dict(up=1, down=1, k=3, padding=[2, 0, 1, 0], groups=1, flip_weight=False, taps=[1, 3, 3, 1]),
    dict(up=1, down=1, k=3, padding=[1, 1, 1, 1], groups=2, flip_weight=True, taps=[1, 3, 3, 1]),
])
def test_conv2d_resample_definition(case):
    rng = np.random.default_rng(7)
    cin, cout, g = 4, 6, case["groups"]
    x = rng.standard_normal([2, cin, 5, 6])
    w = rng.standard_normal([cout, cin // g, case["k"], case["k"]])
    f = upfirdn2d.setup_filter(case["taps"])
    got = conv2d_resample.conv2d_resample(x=t64(x), w=t64(w), f=f, up=case["up"], down=case["down"],
                                          padding=case["padding"], groups=g, flip_weight=case["flip_weight"])
    want = np_conv2d_resample(x, w, f.numpy(), case["up"], case["down"], case["padding"], g, case["flip_weight"])
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------
# bias_act and filtered_lrelu.

def test_bias_act_gain_then_clamp():
    x = torch.tensor([[-3.0, -0.5, 0.25, 2.0]], dtype=torch.float64)
    b = torch.tensor([0.5, -0.5, 0.0, 1.0], dtype=torch.float64)
    for fn in (bias_act.bias_act, bias_act._bias_act_ref):
        y = fn(x=x, b=b, dim=1, act="lrelu", alpha=0.1, gain=4.0, clamp=5.0)
        v = (x + b).numpy()
        want = np.clip(np.where(v >= 0, v, 0.1 * v) * 4.0, -5.0, 5.0)  # clamp acts on the scaled value
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-12)
    y = bias_act.bias_act(torch.tensor([1.0, -1.0]), act="relu")  # default gain sqrt(2)
    np.testing.assert_allclose(y.numpy(), [SQRT2, 0.0], rtol=1e-6)


def np_filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp):
    x = np.asarray(x, np.float64) + np.asarray(b, np.float64)[None, :, None, None]
    x = np_upfirdn(x, fu, up=[up, up], pad=padding, gain=up ** 2)
    x = np.where(x >= 0, x, x * slope) * gain
    if clamp is not None:
        x = np.clip(x, -clamp, clamp)
    return np_upfirdn(x, fd, down=[down, down])


@pytest.mark.parametrize("case", [
    dict(up=2, down=2, padding=[7, 6, 5, 8], gain=SQRT2, slope=0.2, clamp=0.7, ntaps=12),  # SG3 hidden layer
    dict(up=1, down=2, padding=[5, 5, 5, 5], gain=SQRT2, slope=0.2, clamp=None, ntaps=8),
    dict(up=2, down=1, padding=[6, 5], gain=SQRT2, slope=0.2, clamp=None, ntaps=8),
    dict(up=1, down=1, padding=0, gain=1, slope=1, clamp=0.5, ntaps=0),  # SG3 toRGB: identity filters
])
def test_filtered_lrelu_definition(case):
    rng = np.random.default_rng(3)
    x = rng.standard_normal([2, 3, 7, 7])
    b = rng.standard_normal([3])
    n = case["ntaps"]
    fu = np.float32(rng.standard_normal([n])) if n and case["up"] > 1 else None
    fd = np.float32(rng.standard_normal([n])) if n and case["down"] > 1 else None
    p = case["padding"]
    pad = [p] * 4 if isinstance(p, int) else (p if len(p) == 4 else [p[0], p[0], p[1], p[1]])
    got = filtered_lrelu.filtered_lrelu(
        x=t64(x), fu=None if fu is None else torch.as_tensor(fu), fd=None if fd is None else torch.as_tensor(fd),
        b=t64(b), up=case["up"], down=case["down"], padding=p, gain=case["gain"], slope=case["slope"],
        clamp=case["clamp"])
    want = np_filtered_lrelu(x, [[1.0]] if fu is None else fu, [[1.0]] if fd is None else fd, b, case["up"],
                             case["down"], pad, case["gain"], case["slope"], case["clamp"])
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------
# misc.

def test_constant_broadcasts_with_shape():
    c = misc.constant([1.0, 2.0, 3.0], shape=[2, 1])
    assert c.shape == (2, 3) and c.tolist() == [[1.0, 2.0, 3.0]] * 2
    c = misc.constant(5, shape=[3], dtype=torch.float64)
    assert c.dtype == torch.float64 and c.tolist() == [5.0] * 3
    flipped = np.arange(4.0)[None, None, ::-1]  # negative strides, as EDM's augment pipe passes
    assert misc.constant(flipped).flatten().tolist() == [3.0, 2.0, 1.0, 0.0]
    assert misc.constant([1.0, 2.0]) is misc.constant([1.0, 2.0])  # cached


def test_assert_shape_rules():
    t = torch.zeros(2, 3)
    misc.assert_shape(t, [None, 3])
    misc.assert_shape(t, [torch.tensor(2), None])
    with pytest.raises(AssertionError):
        misc.assert_shape(t, [2, 3, 1])
    with pytest.raises(AssertionError):
        misc.assert_shape(t, [2, 4])
    with pytest.raises(AssertionError):
        misc.assert_shape(t, [torch.tensor(5), 3])


def _emit_once_per_location():
    warnings.warn("a once-per-location warning", UserWarning)


def test_suppress_tracer_warnings_keeps_the_shown_once_registry():
    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        _emit_once_per_location()
        _emit_once_per_location()
        assert len(shown) == 1
        for _ in range(3):  # network forwards enter this many times
            with misc.suppress_tracer_warnings():
                warnings.warn("hidden", torch.jit.TracerWarning)
        _emit_once_per_location()
        assert shown == ["a once-per-location warning"]
        with misc.suppress_tracer_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # made inside: stays after the block
        assert warnings.filters[0][0] == "ignore" and warnings.filters[0][2] is DeprecationWarning


# ----------------------------------------------------------------------------
# persistence.

OPT_OUT_SRC = textwrap.dedent('''\
    import torch
    from torch_utils import persistence

    @persistence.persistent_class
    class Quiet(torch.nn.Module):
        def __init__(self, dim, big=None):
            self._record_init_args = False
            super().__init__()
            self.lin = torch.nn.Linear(dim, dim)

    @persistence.persistent_class
    class Loud(torch.nn.Module):
        def __init__(self, dim, scale=2.0):
            super().__init__()
            self.scale = scale
    ''')


@pytest.fixture
def optmod(tmp_path, monkeypatch):
    name = f"optout_net_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(OPT_OUT_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


def test_persistence_record_init_args_opt_out(optmod):
    quiet = optmod.Quiet(3, big=[1, 2])
    assert quiet._init_args is None and quiet._init_kwargs is None
    with pytest.raises(AssertionError):
        _ = quiet.init_args
    with pytest.raises(AssertionError):
        _ = quiet.init_kwargs
    loud = optmod.Loud(4, scale=3.0)
    assert loud._init_args == (4,) and loud._init_kwargs == {"scale": 3.0}
    assert isinstance(loud.init_kwargs, dnnlib.EasyDict) and loud.init_kwargs.scale == 3.0
    fields = loud.__reduce__()
    assert fields[0] is persistence._reconstruct_persistent_obj and fields[2] is None
    meta = fields[1][0]
    assert set(meta) == {"type", "version", "module_src", "class_name", "state"}
    assert (meta["type"], meta["version"], meta["class_name"]) == ("class", 6, "Loud")
    assert meta["module_src"] == OPT_OUT_SRC and "_init_kwargs" in meta["state"]
    back = pickle.loads(pickle.dumps(quiet))
    assert back._init_args is None and torch.equal(back.lin.weight, quiet.lin.weight)
    assert type(loud).__name__ == "Loud" and type(loud).__module__ == optmod.__name__


# ----------------------------------------------------------------------------
# dnnlib.util.

def test_util_small_helpers(tmp_path, capsys):
    assert util.format_time(59.4) == "59s" and util.format_time(3725) == "1h 02m 05s"
    assert util.format_time_brief(3725) == "1h 02m" and util.format_time_brief(90061) == "1d 01h"
    assert util.format_time_brief(61) == "1m 01s"
    assert util.tuple_product((2, 3, 4)) == 24 and util.tuple_product(()) == 1
    dtype, ctype = util.get_dtype_and_ctype("float32")
    assert dtype == np.float32 and ctype is __import__("ctypes").c_float
    assert util.is_pickleable({"a": [1, 2]}) and not util.is_pickleable(lambda: 0)

    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "a.py").write_text("a")
    (tmp_path / "src" / "a.pyc").write_text("b")
    (tmp_path / "src" / "sub" / "c.txt").write_text("c")
    (tmp_path / "src" / "__pycache__").mkdir()
    (tmp_path / "src" / "__pycache__" / "d.txt").write_text("d")
    files = util.list_dir_recursively_with_ignore(str(tmp_path / "src"), ignores=["*.pyc", "__pycache__"],
                                                  add_base_to_relative=True)
    assert sorted(rel for _, rel in files) == [os.path.join("src", "a.py"), os.path.join("src", "sub", "c.txt")]
    util.copy_files_and_create_dirs([(src, str(tmp_path / "dst" / rel)) for src, rel in files])
    assert (tmp_path / "dst" / "src" / "sub" / "c.txt").read_text() == "c"

    log_file = tmp_path / "log.txt"
    with util.Logger(file_name=str(log_file), file_mode="w"):
        print("to both")
        sys.stderr.write("err too\n")
    assert log_file.read_text() == "to both\nerr too\n"
    assert "to both" in capsys.readouterr().out


class _Server(http.server.BaseHTTPRequestHandler):
    hits = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        _Server.hits += 1
        body = b"payload-" + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/named":
            self.send_header("Content-Disposition", 'attachment; filename="net work.pkl"')
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server(serve_http):
    return serve_http(_Server)


def test_open_url_shares_upstreams_cache_layout(server, tmp_path):
    md5 = lambda u: hashlib.md5(u.encode("utf-8")).hexdigest()  # noqa: E731
    # An entry named the way upstream names it is found without any request.
    url = server + "/already/there.pkl"
    (tmp_path / f"{md5(url)}_whatever-upstream.named_it").write_bytes(b"cached bytes")
    before = _Server.hits
    with util.open_url(url, cache_dir=str(tmp_path), verbose=False) as f:
        assert f.read() == b"cached bytes"
    assert _Server.hits == before
    # New entries: <md5>_<server file name>, else <md5>_<whole URL>, unsafe characters -> '_'.
    path = util.open_url(server + "/named", cache_dir=str(tmp_path), return_filename=True, verbose=False)
    assert os.path.basename(path) == md5(server + "/named") + "_net_work.pkl"
    url = server + "/plain/x~y.bin"
    path = util.open_url(url, cache_dir=str(tmp_path), return_filename=True, verbose=False)
    safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-._") else "_" for ch in url)
    assert os.path.basename(path) == md5(url) + "_" + safe
    with open(path, "rb") as f:
        assert f.read() == b"payload-/plain/x~y.bin"
