"""CUDA ops: the plugins build from source, the kernels' math matches float64 references (CPU
emulation of the same code), the autograd wiring in _cuda.py is right, and the seam falls back
cleanly. GPU-only checks skip without a device; benchmarks/gpu_check.py is the full GPU run."""

import ctypes
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import gan_refine  # noqa: F401 - makes torch_utils importable
from torch_utils import custom_ops
from torch_utils.ops import _cuda, bias_act, filtered_lrelu, upfirdn2d

COMPAT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(_cuda.CSRC)))
ACTS = list(_cuda.ACT_INDEX)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def no_tf32(monkeypatch):
    # The reference path's convolutions would otherwise run in TF32 on Ampere and later GPUs
    # and dominate the error being measured.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


# ----------------------------------------------------------------------------------------------
# (a) Every plugin compiles and imports from the real sources.

def test_plugins_build_from_source(tmp_path):
    problem = custom_ops.toolchain_problem()
    if problem:
        pytest.skip(f"cannot build CUDA plugins here: {problem}")
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), GAN_REFINE_OPS="")
    env.setdefault("CUDA_HOME", custom_ops.find_cuda_home())
    env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    # A fresh process on the bare compat folder: no gan_refine import, no cached modules.
    script = ("import sys; sys.path.insert(0, sys.argv[1])\n"
              "from torch_utils.ops import _cuda\n"
              "for name, mod in _cuda.build_all().items():\n"
              "    print(name, mod.__file__, sorted(a for a in dir(mod) if not a.startswith('_')))\n")
    proc = subprocess.run([sys.executable, "-c", script, COMPAT_DIR], env=env, capture_output=True, text=True,
                          timeout=1800)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines() if ln.strip()}
    assert set(lines) == set(_cuda.PLUGINS)
    assert "'bias_act'" in lines["bias_act"] and "'upfirdn2d'" in lines["upfirdn2d"]
    assert "'masked_grad'" in lines["filtered_lrelu"] and "'up_lrelu'" in lines["filtered_lrelu"]
    for ln in lines.values():
        assert ln.split()[1].startswith(str(tmp_path)) and os.path.isfile(ln.split()[1])


# ----------------------------------------------------------------------------------------------
# CPU emulation: host_emulation.cpp runs the kernels' per-element code on float64 arrays.

@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler for the kernel emulation")
    lib_path = str(tmp_path_factory.mktemp("emu") / "gr_emu.so")
    src = os.path.join(_cuda.CSRC, "host_emulation.cpp")
    subprocess.run([cxx, "-O1", "-std=c++17", "-shared", "-fPIC", src, "-o", lib_path], check=True)
    lib = ctypes.CDLL(lib_path)
    lib.gr_emu_bias_act.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_int] * 3 + \
        [ctypes.c_double] * 3 + [ctypes.c_int]
    lib.gr_emu_upfirdn.argtypes = [ctypes.c_void_p] * 9
    return EmuPlugin(lib)


def _ptr(t):
    return None if t is None or t.numel() == 0 else t.data_ptr()


class EmuPlugin:
    """Stands in for the compiled plugins on the CPU, mirroring the bindings' argument handling."""

    def __init__(self, lib):
        self.lib = lib

    vec = 4  # which kernel's order of work bias_act emulates: 0 = general, 2/4/8 = packs

    def bias_act(self, x, b, g1, g2, dim, mode, act, alpha, gain, clamp):
        assert x.dtype == torch.float64
        if not (x.is_contiguous() or (x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last))):
            x = x.contiguous()

        def like_x(t):
            return t if t.stride() == x.stride() else torch.empty_like(x).copy_(t)

        g1 = like_x(g1) if mode >= 1 else None
        g2 = like_x(g2) if mode == 2 else None
        y = torch.empty_like(x)
        assert y.stride() == x.stride()
        has_b = b is not None and b.numel() > 0
        bstride, blen = (max(x.stride(dim), 1), b.numel()) if has_b else (1, 1)
        self.lib.gr_emu_bias_act(_ptr(x), _ptr(b.contiguous()) if has_b else None, _ptr(g1), _ptr(g2), _ptr(y),
                                 x.numel(), bstride, blen, mode, act, alpha, gain, clamp, self.vec)
        return y

    def _run(self, x, f, up, down, pad, flip, gain, b=None, epi=0, act=(1.0, 0.2, -1.0), masks=(None, None),
             tile=None):
        assert x.dtype == torch.float64 and f.dtype == torch.float32 and f.is_contiguous()
        (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, pad
        fh, fw = f.shape[0], f.shape[-1]
        out_w = (x.shape[3] * upx + px0 + px1 - fw) // downx + 1
        out_h = (x.shape[2] * upy + py0 + py1 - fh) // downy + 1
        y = x.new_empty([x.shape[0], x.shape[1], out_h, out_w])
        words = (y.numel() + 31) // 32
        ms, mc = masks if epi == 2 else (torch.zeros(words, dtype=torch.int32), torch.zeros(words, dtype=torch.int32))
        iv = np.array([*x.shape, out_h, out_w, upx, upy, downx, downy, px0, py0, fw, fh, int(f.ndim == 1), int(flip),
                       epi, 1 if tile is None else 2, tile or 0], dtype=np.int32)
        fv = np.array([gain, *act], dtype=np.float32)
        st = np.array(x.stride(), dtype=np.int64)
        rc = self.lib.gr_emu_upfirdn(_ptr(x), _ptr(y), _ptr(f), _ptr(b), _ptr(ms), _ptr(mc), st.ctypes.data,
                                     iv.ctypes.data, fv.ctypes.data)
        assert rc == 0, "no such specialisation"
        return y, ms, mc

    def upfirdn2d(self, x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain):
        return self._run(x, f, (upx, upy), (downx, downy), (px0, px1, py0, py1), flip, gain)[0]

    def up_lrelu(self, x, b, f, up, px0, px1, py0, py1, flip, gain, act_gain, slope, clamp):
        b = b.contiguous() if b is not None and b.numel() else None
        return list(self._run(x, f, (up, up), (1, 1), (px0, px1, py0, py1), flip, gain, b=b, epi=1,
                              act=(act_gain, slope, clamp)))

    def masked_grad(self, g, f, up, down, px0, px1, py0, py1, flip, gain, act_gain, slope, sign, clamped, zh, zw):
        dz = self._run(g, f, (up, up), (down, down), (px0, px1, py0, py1), flip, gain, epi=2,
                       act=(act_gain, slope, -1.0), masks=(sign, clamped))[0]
        assert dz.shape[2:] == (zh, zw)
        return dz


@pytest.fixture
def emu_ops(emu, monkeypatch):
    monkeypatch.setattr(_cuda, "plugin", lambda name: emu)
    return emu


def np_upfirdn(x, f, up, down, pad, flip, gain):
    """Float64 definition: zero-insert, pad/crop, true convolution, keep every down-th pixel."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, pad
    f = np.asarray(f, dtype=np.float64)
    f2 = np.outer(f, f) if f.ndim == 1 else f
    n, c, h, w = x.shape
    xu = np.zeros([n, c, h * upy, w * upx])
    xu[:, :, ::upy, ::upx] = x
    xp = np.pad(xu, [(0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))])
    xp = xp[:, :, max(-py0, 0):xp.shape[2] - max(-py1, 0), max(-px0, 0):xp.shape[3] - max(-px1, 0)]
    k = f2 if flip else f2[::-1, ::-1]
    fh, fw = k.shape
    oh, ow = xp.shape[2] - fh + 1, xp.shape[3] - fw + 1
    y = np.zeros([n, c, oh, ow])
    for i in range(fh):
        for j in range(fw):
            y += k[i, j] * xp[:, :, i:i + oh, j:j + ow]
    return y[:, :, ::downy, ::downx] * gain


UPFIRDN_CASES = [  # up, down, pad, filter taps (negative: 1-D separable), flip
    ((1, 1), (1, 1), (2, 1, 2, 1), 4, False),
    ((2, 2), (1, 1), (2, 1, 2, 1), 4, False),
    ((1, 1), (2, 2), (1, 1, 1, 1), 4, True),
    ((2, 2), (1, 1), (5, 6, 5, 6), -12, False),
    ((1, 1), (2, 2), (5, 5, 5, 4), -12, False),
    ((3, 1), (1, 2), (-2, 3, 4, -1), 5, True),
    ((1, 2), (3, 1), (4, 3, -2, 2), -9, False),
]


def _filter(taps, rng):
    return torch.tensor(rng.random(abs(taps)) + 0.1, dtype=torch.float32) if taps < 0 else \
        torch.tensor(rng.random([taps, taps + 1 if taps == 5 else taps]) + 0.1, dtype=torch.float32)


@pytest.mark.parametrize("case", UPFIRDN_CASES)
def test_emulated_upfirdn_matches_definition(emu, case):
    up, down, pad, taps, flip = case
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal([2, 3, 7, 6]))
    f = _filter(taps, rng)
    y, _, _ = emu._run(x, f, up, down, pad, flip, 1.7)
    ref = np_upfirdn(x.numpy(), f.numpy(), up, down, pad, flip, 1.7)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-6, atol=1e-9)
    # Strided (channels_last) input reads the same pixels.
    y2, _, _ = emu._run(x.to(memory_format=torch.channels_last), f, up, down, pad, flip, 1.7)
    np.testing.assert_allclose(y2.numpy(), ref, rtol=1e-6, atol=1e-9)


TILED_CASES = [  # the launcher's compile-time 2-D specialisations; up, down, pad, filter [fh, fw]
    ((1, 1), (1, 1), (1, 1, 1, 1), (4, 4)),       # after conv2d_resample's transposed conv
    ((1, 1), (1, 1), (-1, 3, 2, -2), (4, 4)),
    ((2, 2), (1, 1), (2, 1, 2, 1), (4, 4)),       # upsample2d
    ((2, 2), (1, 1), (-3, 4, 0, -1), (4, 4)),
    ((1, 1), (2, 2), (1, 1, 1, 1), (4, 4)),       # downsample2d
    ((1, 1), (2, 2), (2, -1, -2, 3), (4, 4)),
    ((1, 1), (2, 1), (5, 5, 0, 0), (1, 12)),      # 12-tap separable passes
    ((1, 1), (1, 2), (0, 0, 5, 4), (12, 1)),
    ((2, 1), (1, 1), (6, 5, 0, 0), (1, 12)),
    ((1, 2), (1, 1), (0, 0, 6, 5), (12, 1)),
]


@pytest.mark.parametrize("tile", [0, 8, 16, 32])
@pytest.mark.parametrize("case", TILED_CASES)
def test_emulated_tiled_upfirdn_matches_definition(emu, case, tile):
    """The shared-memory tiled kernel's algorithm: tile origins, buffer sizes, zero fill at the
    edges and the shifted padding reproduce the definition for every tile size it launches with."""
    up, down, pad, (fh, fw) = case
    rng = np.random.default_rng(13)
    x = torch.tensor(rng.standard_normal([2, 2, 19, 37]))
    f = torch.tensor(rng.random([fh, fw]) + 0.1, dtype=torch.float32)
    ref = np_upfirdn(x.numpy(), f.numpy(), up, down, pad, False, 1.3)
    for xin in (x, x.to(memory_format=torch.channels_last)):
        y, _, _ = emu._run(xin, f, up, down, pad, False, 1.3, tile=tile)
        assert y.shape == ref.shape
        np.testing.assert_allclose(y.numpy(), ref, rtol=1e-6, atol=1e-9)
    y, _, _ = emu._run(x, f, up, down, pad, True, 1.3, tile=tile)
    np.testing.assert_allclose(y.numpy(), np_upfirdn(x.numpy(), f.numpy(), up, down, pad, True, 1.3), rtol=1e-6,
                               atol=1e-9)


def test_emulated_lrelu_epilogue_and_mask(emu):
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.standard_normal([2, 3, 5, 7]))  # 2*3*10*14 = 840 outputs: partial last word
    b = torch.tensor(rng.standard_normal(3))
    f = torch.tensor(rng.random(12) + 0.1, dtype=torch.float32)
    z, sign, clamped = emu._run(x, f, (2, 2), (1, 1), (5, 6, 5, 6), False, 4.0, b=b, epi=1, act=(1.4, 0.2, 0.9))
    t = np_upfirdn((x + b[None, :, None, None]).numpy(), f.numpy(), (2, 2), (1, 1), (5, 6, 5, 6), False, 4.0)
    a = np.where(t > 0, t, 0.2 * t) * 1.4
    np.testing.assert_allclose(z.numpy(), np.clip(a, -0.9, 0.9), rtol=1e-6, atol=1e-9)
    bits = lambda w: np.unpackbits(w.numpy().view(np.uint8), bitorder="little")[:z.numel()].astype(bool)  # noqa: E731
    np.testing.assert_array_equal(bits(sign), (t > 0).ravel())
    np.testing.assert_array_equal(bits(clamped), (np.abs(a) > 0.9).ravel())


@pytest.mark.parametrize("act", ACTS)
def test_emulated_bias_act_derivatives(emu, act, monkeypatch):
    """Forward, first and second derivative of every activation against torch autograd in float64."""
    spec = bias_act.activation_funcs[act]
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.standard_normal([3, 4, 5]) * 3)
    b = torch.tensor(rng.standard_normal(4))
    alpha, gain, clamp = float(spec.def_alpha), float(spec.def_gain), 1.5
    v = (x + b[None, :, None]).requires_grad_(True)
    yr = spec.func(v, alpha=alpha) * gain
    d1 = torch.autograd.grad(yr.sum(), v, create_graph=True)[0]
    d2 = torch.autograd.grad(d1.sum(), v, allow_unused=True)[0] if d1.requires_grad else None
    d2 = torch.zeros_like(x) if d2 is None else d2
    passed = (yr.abs() <= clamp).detach()
    g1 = torch.tensor(rng.standard_normal(x.shape))
    g2 = torch.tensor(rng.standard_normal(x.shape))
    i = _cuda.ACT_INDEX[act]
    for vec in (0, 4):
        monkeypatch.setattr(emu, "vec", vec)
        torch.testing.assert_close(emu.bias_act(x, b, None, None, 1, 0, i, alpha, gain, clamp),
                                   yr.detach().clamp(-clamp, clamp))
        torch.testing.assert_close(emu.bias_act(x, b, g1, None, 1, 1, i, alpha, gain, clamp),
                                   g1 * d1.detach() * passed)
        torch.testing.assert_close(emu.bias_act(x, b, g1, g2, 1, 2, i, alpha, gain, clamp), g1 * g2 * d2 * passed)


@pytest.mark.parametrize("vec", [2, 4, 8])
@pytest.mark.parametrize("shape,dim,channels_last", [([3, 5, 2, 3], 1, False), ([3, 5, 2, 3], 1, True),
                                                     ([7, 6], 1, False), ([2, 3, 4, 4], 1, False),
                                                     ([4, 3, 5], 2, False), ([5, 3, 7], 0, False)])
def test_emulated_bias_act_packs_bias_index(emu, monkeypatch, vec, shape, dim, channels_last):
    """The vectorised kernel steps the bias index inside a pack; check it against broadcasting for
    bias strides that the pack length does and does not divide, with and without a tail."""
    monkeypatch.setattr(emu, "vec", vec)
    rng = np.random.default_rng(12)
    x = torch.tensor(rng.standard_normal(shape))
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    b = torch.tensor(rng.standard_normal(shape[dim]))
    view = [-1 if d == dim else 1 for d in range(len(shape))]
    y = emu.bias_act(x, b, None, None, dim, 0, _cuda.ACT_INDEX["linear"], 0.0, 1.0, -1.0)
    torch.testing.assert_close(y, x + b.reshape(view), rtol=0, atol=0)
    y = emu.bias_act(x, None, None, None, dim, 0, _cuda.ACT_INDEX["lrelu"], 0.2, 2.0, -1.0)
    torch.testing.assert_close(y, torch.nn.functional.leaky_relu(x, 0.2) * 2.0)


# ----------------------------------------------------------------------------------------------
# _cuda.py's autograd wiring, run on the emulated kernels in float64.

@pytest.mark.parametrize("act", ACTS)
def test_bias_act_autograd_gradgradcheck(emu_ops, act):
    spec = bias_act.activation_funcs[act]
    torch.manual_seed(4)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: _cuda.bias_act(x, b, 1, act, float(spec.def_alpha), float(spec.def_gain), 10.0)  # noqa: E731
    torch.testing.assert_close(fn(x, b), bias_act.bias_act(x, b, act=act, clamp=10.0, impl="ref"))
    assert torch.autograd.gradcheck(fn, (x, b))
    if spec.has_2nd_grad:
        assert torch.autograd.gradgradcheck(fn, (x, b))


def test_bias_act_channels_last_and_dim(emu_ops):
    torch.manual_seed(5)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_(True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = _cuda.bias_act(x, b, 1, "lrelu", 0.2, 2 ** 0.5, 0.5)
    yr = bias_act.bias_act(x, b, act="lrelu", clamp=0.5, impl="ref")
    torch.testing.assert_close(y, yr)
    assert y.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, [x, b], g), torch.autograd.grad(yr, [x, b], g))
    x2 = torch.randn(6, 7, dtype=torch.float64)
    b2 = torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(_cuda.bias_act(x2, b2, 1, "swish", 0.0, 1.0, None),
                               bias_act.bias_act(x2, b2, act="swish", gain=1.0, impl="ref"))


@pytest.mark.parametrize("case", UPFIRDN_CASES)
def test_upfirdn2d_autograd(emu_ops, case):
    up, down, pad, taps, flip = case
    rng = np.random.default_rng(6)
    f = _filter(taps, rng)
    x = torch.tensor(rng.standard_normal([1, 2, 6, 5]), requires_grad=True)
    kw = dict(up=list(up), down=list(down), padding=list(pad), flip_filter=flip, gain=1.3)
    fn = lambda x: _cuda.upfirdn2d(x, f, *up, *down, *pad, flip, 1.3)  # noqa: E731
    torch.testing.assert_close(fn(x), upfirdn2d.upfirdn2d(x, f, impl="ref", **kw))
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("sep,up,down,clamp,flip", [(True, 2, 2, 0.7, False), (False, 2, 1, None, True),
                                                    (True, 1, 2, None, False), (False, 3, 2, 0.5, False)])
def test_filtered_lrelu_autograd(emu_ops, sep, up, down, clamp, flip):
    rng = np.random.default_rng(7)
    taps_u, taps_d = (12, 12) if sep else (4, 3)
    fu = upfirdn2d.setup_filter(rng.random(taps_u) + 0.1, separable=sep)
    fd = upfirdn2d.setup_filter(rng.random(taps_d) + 0.1, separable=sep)
    x = torch.tensor(rng.standard_normal([2, 3, 7, 6]), requires_grad=True)
    b = torch.tensor(rng.standard_normal(3), requires_grad=True)
    pad = [11, 12, 10, 13] if sep else [2, 1, 1, 2]
    fn = lambda x, b: _cuda.filtered_lrelu(x, fu, fd, b, up, down, *pad, 1.4, 0.2, clamp, flip)  # noqa: E731
    ref = lambda x, b: filtered_lrelu.filtered_lrelu(x, fu, fd, b, up, down, pad, 1.4, 0.2, clamp, flip,  # noqa: E731
                                                     impl="ref")
    y, yr = fn(x, b), ref(x, b)
    torch.testing.assert_close(y, yr)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, [x, b], g), torch.autograd.grad(yr, [x, b], g))
    assert torch.autograd.gradcheck(fn, (x, b))
    fn_id = lambda x: _cuda.filtered_lrelu(x, None, None, None, 1, 1, 0, 0, 0, 0, 1.0, 0.3, None, False)  # noqa
    torch.testing.assert_close(fn_id(x), torch.nn.functional.leaky_relu(x, 0.3))


def test_no_grad_calls_skip_autograd_and_match(emu_ops):
    """Without anything to differentiate the ops call the kernels directly; same results."""
    rng = np.random.default_rng(14)
    x = torch.tensor(rng.standard_normal([2, 3, 7, 6]))
    b = torch.tensor(rng.standard_normal(3))
    f4, f12 = _filter(4, rng), _filter(-12, rng)
    with torch.no_grad():
        torch.testing.assert_close(_cuda.bias_act(x, b, 1, "lrelu", 0.2, 1.4, 0.8),
                                   bias_act.bias_act(x, b, act="lrelu", gain=1.4, clamp=0.8, impl="ref"))
        torch.testing.assert_close(_cuda.upfirdn2d(x, f4, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0),
                                   upfirdn2d.upfirdn2d(x, f4, up=2, padding=[2, 1, 2, 1], gain=4.0, impl="ref"))
        y = _cuda.filtered_lrelu(x, f12, f12, b, 2, 2, 11, 10, 11, 10, 1.4, 0.2, 0.7, False)
        assert not y.requires_grad
        torch.testing.assert_close(y, filtered_lrelu.filtered_lrelu(x, f12, f12, b, 2, 2, [11, 10, 11, 10], 1.4, 0.2,
                                                                    0.7, impl="ref"))


# ----------------------------------------------------------------------------------------------
# (c) The seam: forced reference path, one warning on build failure, report().

class FakeCudaTensor:
    is_cuda = True
    dtype = torch.float32


@pytest.fixture
def fresh_seam(monkeypatch):
    monkeypatch.setattr(_cuda, "_failed", {})
    monkeypatch.setattr(_cuda, "_warned", False)
    monkeypatch.setattr(_cuda, "_mods", {})
    monkeypatch.setattr(_cuda, "_ready", {})
    monkeypatch.setattr(custom_ops, "_paths", {})
    monkeypatch.delenv("GAN_REFINE_OPS", raising=False)


def test_forced_reference_path(fresh_seam, monkeypatch):
    monkeypatch.setattr(_cuda, "plugin", lambda name: pytest.fail("GAN_REFINE_OPS=ref must not build"))
    monkeypatch.setenv("GAN_REFINE_OPS", "ref")
    assert not _cuda.use_cuda("upfirdn2d", "cuda", FakeCudaTensor())
    assert custom_ops.report()["upfirdn2d"] == "ref (GAN_REFINE_OPS=ref)"
    assert custom_ops.report()["bias_act"] == "unused"


def test_reference_for_cpu_tensors_and_impl_ref(fresh_seam):
    x = torch.randn(2, 3)
    y = bias_act.bias_act(x, act="relu")
    torch.testing.assert_close(y, x.relu() * 2 ** 0.5)
    assert custom_ops.report()["bias_act"] == "ref (not a CUDA tensor)"
    assert not _cuda.use_cuda("filtered_lrelu", "ref", FakeCudaTensor())
    assert custom_ops.report()["filtered_lrelu"] == "ref"


def test_build_failure_warns_once_and_falls_back(fresh_seam, monkeypatch):
    calls = []

    def failing_build(name, *args, **kwargs):
        calls.append(name)
        raise RuntimeError("cannot build CUDA plugin: nvcc exploded\nmore log")

    monkeypatch.setattr(custom_ops, "get_plugin", failing_build)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            for op in custom_ops.OPS:
                assert not _cuda.use_cuda(op, "cuda", FakeCudaTensor())
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert "nvcc exploded" in str(caught[0].message)
    assert len(calls) == len(set(calls)) == 3  # each plugin tried once, never again
    for op in custom_ops.OPS:
        assert custom_ops.report()[op] == "ref (build failed: cannot build CUDA plugin: nvcc exploded)"


def test_hot_path_after_load_does_no_build_work(fresh_seam, monkeypatch):
    """Once the plugins are loaded, use_cuda and plugin() answer from memory: no header globbing,
    no get_plugin (lock + hashing); GAN_REFINE_OPS=ref and impl='ref' still win."""
    loads = []
    monkeypatch.setattr(custom_ops, "get_plugin", lambda name, *a, **k: loads.append(name) or object())
    assert _cuda.use_cuda("filtered_lrelu", "cuda", FakeCudaTensor())
    assert sorted(loads) == ["gan_refine_filtered_lrelu_plugin", "gan_refine_upfirdn2d_plugin"]
    monkeypatch.setattr(_cuda, "_headers", lambda: pytest.fail("hot path touched the filesystem"))
    monkeypatch.setattr(custom_ops, "get_plugin", lambda *a, **k: pytest.fail("hot path called get_plugin"))
    for _ in range(3):
        assert _cuda.use_cuda("filtered_lrelu", "cuda", FakeCudaTensor())
        assert _cuda.plugin("upfirdn2d") is _cuda.plugin("upfirdn2d")
    assert custom_ops.report()["filtered_lrelu"] == "cuda"
    assert not _cuda.use_cuda("filtered_lrelu", "ref", FakeCudaTensor())
    assert custom_ops.report()["filtered_lrelu"] == "ref"
    monkeypatch.setenv("GAN_REFINE_OPS", "ref")
    assert not _cuda.use_cuda("filtered_lrelu", "cuda", FakeCudaTensor())
    assert custom_ops.report()["filtered_lrelu"] == "ref (GAN_REFINE_OPS=ref)"


def test_no_toolchain_gives_readable_error(monkeypatch):
    monkeypatch.setattr(custom_ops, "find_cuda_home", lambda: None)
    monkeypatch.setattr(custom_ops, "_plugins", {})
    with pytest.raises(RuntimeError, match="nvcc not on PATH"):
        custom_ops.get_plugin("gr_never_built", ["nothing.cpp"])


def test_compile_error_is_readable(tmp_path, monkeypatch):
    problem = custom_ops.toolchain_problem()
    if problem:
        pytest.skip(problem)
    src = tmp_path / "broken_bind.cpp"
    src.write_text("this is not C++;\n")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    with pytest.raises(RuntimeError) as info:
        custom_ops.get_plugin("gr_broken_test_plugin", [str(src)])
    msg = str(info.value)
    assert "gr_broken_test_plugin" in msg and "broken_bind.cpp" in msg and "error" in msg


def test_build_dir_follows_content(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    src = tmp_path / "a_kernel.cu"
    src.write_text("// v1\n")
    first = custom_ops.build_dir("gr_x", [str(src)])
    assert first == custom_ops.build_dir("gr_x", [str(src)])
    assert first.startswith(str(tmp_path))
    src.write_text("// v2\n")
    assert custom_ops.build_dir("gr_x", [str(src)]) != first


def test_arch_list_default(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6;9.0")
    assert custom_ops.default_arch_list() == "8.6;9.0"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert custom_ops.default_arch_list() == "9.0"


# ----------------------------------------------------------------------------------------------
# (b) On a GPU: the real kernels against the reference path.

def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@needs_gpu
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_bias_act(act, dtype):
    torch.manual_seed(8)
    x = torch.randn(4, 16, 8, 8, device="cuda", dtype=dtype, requires_grad=True)
    b = torch.randn(16, device="cuda", dtype=dtype, requires_grad=True)
    y = bias_act.bias_act(x, b, act=act, clamp=2.0)
    assert custom_ops.report()["bias_act"] == "cuda"
    yr = bias_act.bias_act(x, b, act=act, clamp=2.0, impl="ref")
    assert _rel(y, yr) < 1e-5
    g = torch.randn_like(y)
    for a, r in zip(torch.autograd.grad(y, [x, b], g), torch.autograd.grad(yr, [x, b], g)):
        assert _rel(a, r) < 1e-5
    if dtype == torch.float64 and bias_act.activation_funcs[act].has_2nd_grad:
        xs, bs = x[:1, :3, :3, :3].detach().requires_grad_(True), b[:3].detach().requires_grad_(True)
        assert torch.autograd.gradgradcheck(lambda x, b: bias_act.bias_act(x, b, act=act), (xs, bs))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_gpu_bias_act_layouts(dtype):
    """Vectorised and general kernels: aligned, misaligned (storage offset), a tail of fewer than
    one vector, channels_last, a 2-D bias stride of 1; forward and gradients vs a float64 reference."""
    torch.manual_seed(15)
    base = torch.randn(3 * 5 * 7 * 9 + 1, device="cuda", dtype=torch.float64).to(dtype)
    views = [base[:-1].view(3, 5, 7, 9), base[1:].view(3, 5, 7, 9),  # 945 elements: a tail for every vector width
             base[:-1].view(3, 5, 7, 9).contiguous(memory_format=torch.channels_last), base[:945].view(135, 7)]
    tol = 2e-3 if dtype == torch.float16 else 1e-6
    for v in views:
        x = v.detach().requires_grad_(True)  # keeps the storage offset of base[1:]
        b = torch.randn(x.shape[1], device="cuda", dtype=dtype, requires_grad=True)
        y = bias_act.bias_act(x, b, act="lrelu", clamp=1.5)
        assert custom_ops.report()["bias_act"] == "cuda"
        x64, b64 = x.detach().double().requires_grad_(True), b.detach().double().requires_grad_(True)
        yr = bias_act.bias_act(x64, b64, act="lrelu", clamp=1.5, impl="ref")
        assert _rel(y, yr) < tol
        g = torch.randn_like(yr)
        for a, r in zip(torch.autograd.grad(y, [x, b], g.to(dtype)), torch.autograd.grad(yr, [x64, b64], g)):
            assert _rel(a, r) < tol


@needs_gpu
@pytest.mark.parametrize("size", [5, 9, 16, 33])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gpu_upfirdn2d_tiles(size, dtype):
    """StyleGAN2's 4x4 resampling on planes that use each tile shape of the tiled kernel."""
    rng = np.random.default_rng(16)
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device="cuda")
    x = torch.tensor(rng.standard_normal([3, 5, size, size]), dtype=dtype, device="cuda", requires_grad=True)
    tol = 2e-3 if dtype == torch.float16 else 1e-5
    for kw in (dict(padding=1, gain=4), dict(up=2, padding=[2, 1, 2, 1], gain=4), dict(down=2, padding=1)):
        y = upfirdn2d.upfirdn2d(x, f, **kw)
        assert custom_ops.report()["upfirdn2d"] == "cuda"
        x64 = x.detach().double().requires_grad_(True)
        yr = upfirdn2d.upfirdn2d(x64, f, impl="ref", **kw)
        assert _rel(y, yr) < tol
        g = torch.randn_like(yr)
        assert _rel(torch.autograd.grad(y, x, g.to(dtype))[0], torch.autograd.grad(yr, x64, g)[0]) < tol


@needs_gpu
@pytest.mark.parametrize("case", UPFIRDN_CASES)
def test_gpu_upfirdn2d(case):
    up, down, pad, taps, flip = case
    rng = np.random.default_rng(9)
    f = _filter(taps, rng).cuda()
    x = torch.tensor(rng.standard_normal([2, 8, 16, 12]), dtype=torch.float32, device="cuda", requires_grad=True)
    kw = dict(up=list(up), down=list(down), padding=list(pad), flip_filter=flip, gain=1.3)
    y = upfirdn2d.upfirdn2d(x, f, **kw)
    assert custom_ops.report()["upfirdn2d"] == "cuda"  # before the reference call records "ref"
    yr = upfirdn2d.upfirdn2d(x, f, impl="ref", **kw)
    assert _rel(y, yr) < 1e-5
    g = torch.randn_like(y)
    assert _rel(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(yr, x, g)[0]) < 1e-5
    xs = x[:1, :2].detach().double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: upfirdn2d.upfirdn2d(x, f, **kw), (xs,))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_filtered_lrelu(dtype):
    rng = np.random.default_rng(10)
    fu = upfirdn2d.setup_filter(rng.random(12) + 0.1, device="cuda")
    fd = upfirdn2d.setup_filter(rng.random(12) + 0.1, device="cuda")
    x = torch.tensor(rng.standard_normal([4, 8, 20, 20]), dtype=dtype, device="cuda", requires_grad=True)
    b = torch.tensor(rng.standard_normal(8), dtype=dtype, device="cuda", requires_grad=True)
    kw = dict(up=2, down=2, padding=[11, 10, 11, 10], clamp=1.0)
    y = filtered_lrelu.filtered_lrelu(x, fu, fd, b, **kw)
    assert custom_ops.report()["filtered_lrelu"] == "cuda"  # before the reference call records "ref"
    yr = filtered_lrelu.filtered_lrelu(x, fu, fd, b, impl="ref", **kw)
    assert _rel(y, yr) < 1e-5
    g = torch.randn_like(y)
    for a, r in zip(torch.autograd.grad(y, [x, b], g), torch.autograd.grad(yr, [x, b], g)):
        assert _rel(a, r) < 1e-5


# ----------------------------------------------------------------------------------------------
# Inside torch.compile the ops take their reference path.

class _CudaLike:
    is_cuda, dtype = True, torch.float32


def test_ops_take_the_reference_path_while_compiling(monkeypatch):
    monkeypatch.setattr(_cuda, "_ready", {"bias_act"})
    monkeypatch.delenv("GAN_REFINE_OPS", raising=False)
    assert _cuda.use_cuda("bias_act", "cuda", _CudaLike())  # a ready plugin is used eagerly...
    monkeypatch.setattr(_cuda, "_compiling", lambda: True)
    assert not _cuda.use_cuda("bias_act", "cuda", _CudaLike())  # ...and not while compiling


def test_the_compiling_test_is_true_under_dynamo():
    """dynamo answers is_compiling() as True while tracing, also through the seam's alias (the
    eager backend: nothing is built)."""
    def f(x):
        return x + 1 if _cuda._compiling() else x - 1
    x = torch.zeros(3)
    assert torch.equal(f(x), x - 1)
    assert torch.equal(torch.compile(f, backend="eager", fullgraph=True)(x), x + 1)
    torch._dynamo.reset()
