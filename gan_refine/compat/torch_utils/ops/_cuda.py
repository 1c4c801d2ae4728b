"""Seam between the reference ops (bias_act.py, upfirdn2d.py, filtered_lrelu.py) and the CUDA
plugins in csrc/.

Each op asks `use_cuda(op, impl, x)`; when it says yes, the op calls the function of the same
name here, which runs the kernels and carries its own autograd. Importing this module builds
nothing: a plugin is compiled (or loaded from the cache, see custom_ops.py) the first time an op
needs it. If a build fails, one warning is issued and every op falls back to its reference path.
"""

import glob
import os
import threading
import warnings

import torch
from torch.autograd.function import once_differentiable

from .. import custom_ops

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")

# plugin -> compiled sources; every header in csrc/ is hashed with each plugin.
PLUGINS = {
    "bias_act": ["bias_act_bind.cpp", "bias_act_kernel.cu"],
    "upfirdn2d": ["upfirdn2d_bind.cpp", "upfirdn2d_kernel.cu"],
    "filtered_lrelu": ["filtered_lrelu_bind.cpp", "filtered_lrelu_kernel.cu"],
}
# op -> plugins it runs on (filtered_lrelu's down-filter pass is a plain upfirdn2d).
OP_PLUGINS = {"bias_act": ["bias_act"], "upfirdn2d": ["upfirdn2d"], "filtered_lrelu": ["filtered_lrelu", "upfirdn2d"]}
_DTYPES = (torch.float16, torch.float32, torch.float64)

_lock = threading.Lock()
_failed = {}    # plugin -> reason
_warned = False
# Hot-path caches, read without a lock: a dict lookup is atomic, and a racing first call at
# worst loads the same (already cached) module twice.
_mods = {}      # plugin -> loaded module
_ready = {}     # op -> True once every plugin it needs is loaded


def _headers():
    return sorted(glob.glob(os.path.join(CSRC, "*.h")) + glob.glob(os.path.join(CSRC, "*.cuh")))


def plugin(name):
    """Build (or load from cache) and return plugin `name`; raises RuntimeError on failure."""
    mod = _mods.get(name)
    if mod is None:
        sources = [os.path.join(CSRC, s) for s in PLUGINS[name]]
        mod = custom_ops.get_plugin(f"gan_refine_{name}_plugin", sources, headers=_headers())
        _mods[name] = mod
    return mod


def build_all():
    """Build and import every plugin (raises on the first failure); returns {name: module}."""
    return {name: plugin(name) for name in PLUGINS}


def _plugins_ready(op):
    """None when every plugin `op` needs is loaded, else the reason it is not."""
    global _warned
    for name in OP_PLUGINS[op]:
        if name in _failed:
            return _failed[name]
        try:
            plugin(name)
        except Exception as err:  # noqa: BLE001 - any build problem means "use the reference"
            reason = str(err)
            with _lock:
                _failed[name] = reason
                if not _warned:
                    _warned = True
                    warnings.warn(f"gan_refine: could not build the CUDA plugin '{name}'; falling back to the "
                                  f"slower PyTorch reference ops (torch_utils.custom_ops.report() tells which "
                                  f"path each op takes). {reason}", RuntimeWarning, stacklevel=4)
            return reason
    _ready[op] = True
    return None


_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


def use_cuda(op, impl, x):
    """True when `op` should run its CUDA kernel for tensor `x` with the caller's `impl`."""
    # Called on every op invocation: the common "yes" costs a few attribute and dict lookups,
    # no filesystem access and no lock. Everything else goes through _use_cuda_slow.
    if _compiling():
        # Inside torch.compile the reference path is traced and fused by inductor; a plugin
        # call would break the graph (and any CUDA graph) at every op.
        return False
    if impl == "cuda" and op in _ready and getattr(x, "is_cuda", False) and x.dtype in _DTYPES \
            and not custom_ops.forced_ref():
        custom_ops.record_path(op, "cuda")
        return True
    return _use_cuda_slow(op, impl, x)


def _use_cuda_slow(op, impl, x):
    if impl != "cuda":
        custom_ops.record_path(op, "ref")
        return False
    if custom_ops.forced_ref():
        custom_ops.record_path(op, "ref (GAN_REFINE_OPS=ref)")
        return False
    if not getattr(x, "is_cuda", False):
        custom_ops.record_path(op, "ref (not a CUDA tensor)")
        return False
    if x.dtype not in _DTYPES:
        custom_ops.record_path(op, f"ref (dtype {x.dtype} has no kernel)")
        return False
    reason = _plugins_ready(op)
    if reason is not None:
        custom_ops.record_path(op, f"ref (build failed: {reason.splitlines()[0]})")
        return False
    custom_ops.record_path(op, "cuda")
    return True


# ----------------------------------------------------------------------------------------------
# bias_act

ACT_INDEX = {"linear": 1, "relu": 2, "lrelu": 3, "tanh": 4, "sigmoid": 5, "elu": 6, "selu": 7, "softplus": 8,
             "swish": 9}
_PIECEWISE_LINEAR = (1, 2, 3)  # second derivative zero almost everywhere


def _reduce_dims(t, dim):
    return [i for i in range(t.ndim) if i != dim]


def _bias_act_call(mode, x, b, g1, g2, spec):
    dim, act, alpha, gain, clamp = spec
    return plugin("bias_act").bias_act(x, b, g1, g2, dim, mode, act, alpha, gain, clamp)


class _BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, spec):
        y = _bias_act_call(0, x, b, None, None, spec)
        # Linear without clamp has the constant derivative `gain`: nothing to keep.
        keep = spec[1] != 1 or spec[4] >= 0
        ctx.save_for_backward(x if keep else None, b if keep else None)
        ctx.spec = spec
        return y

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        spec = ctx.spec
        dx = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            if x is None:
                dx = dy * spec[3]
            elif torch.is_grad_enabled():  # create_graph=True: keep dx differentiable
                dx = _BiasActGrad.apply(dy, x, b, spec)
            else:  # the usual first-order backward skips a second autograd.Function
                dx = _bias_act_call(1, x, b, dy, None, spec)
        if ctx.needs_input_grad[1]:
            db = dx.sum(_reduce_dims(dx, spec[0]))
        return dx, db, None


class _BiasActGrad(torch.autograd.Function):
    """dx = dy * f'(x + b) * gain * pass; differentiable once more (double backward)."""

    @staticmethod
    def forward(ctx, dy, x, b, spec):
        ctx.save_for_backward(dy, x, b)
        ctx.spec = spec
        return _bias_act_call(1, x, b, dy, None, spec)

    @staticmethod
    def backward(ctx, ddx):
        dy, x, b = ctx.saved_tensors
        dim, act = ctx.spec[0], ctx.spec[1]
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:
            d_dy = _BiasActGrad.apply(ddx, x, b, ctx.spec)
        if (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]) and act not in _PIECEWISE_LINEAR:
            d_xb = _bias_act_call(2, x, b, ddx, dy, ctx.spec)
            d_x = d_xb if ctx.needs_input_grad[1] else None
            d_b = d_xb.sum(_reduce_dims(d_xb, dim)) if ctx.needs_input_grad[2] else None
        return d_dy, d_x, d_b, None


def bias_act(x, b, dim, act, alpha, gain, clamp):
    """CUDA twin of bias_act._bias_act_ref; alpha/gain already resolved, clamp float or None."""
    if b is not None and (b.dtype != x.dtype or b.device != x.device):
        b = b.to(device=x.device, dtype=x.dtype)
    spec = (int(dim), ACT_INDEX[act], float(alpha), float(gain), -1.0 if clamp is None else float(clamp))
    if torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad)):
        return _BiasAct.apply(x, b, spec)
    return _bias_act_call(0, x, b, None, None, spec)  # nothing to differentiate: skip autograd's overhead


# ----------------------------------------------------------------------------------------------
# upfirdn2d

def _upfirdn_run(x, f, cfg):
    """Forward pass without autograd. cfg = (upx, upy, downx, downy, px0, px1, py0, py1, flip, gain)."""
    upx, upy, downx, downy, px0, px1, py0, py1, flip, gain = cfg
    mod = plugin("upfirdn2d")
    if f.ndim == 2:
        return mod.upfirdn2d(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain)
    # Separable: the x and y passes act on different axes, so they compose exactly.
    taps = f.numel()
    t = mod.upfirdn2d(x, f.reshape(1, taps), upx, 1, downx, 1, px0, px1, 0, 0, flip, 1.0)
    return mod.upfirdn2d(t, f.reshape(taps, 1), 1, upy, 1, downy, 0, 0, py0, py1, flip, gain)


def adjoint_cfg(cfg, fw, fh, in_h, in_w, out_h, out_w):
    """The upfirdn2d whose output is the gradient w.r.t. the input of `cfg`'s pass.

    Output o reads the zero-inserted input at o*down - p0 + k; transposing swaps up and down,
    reverses the taps (flip toggles) and moves the padding to p0' = taps - 1 - p0. p1' makes
    the result exactly in_h x in_w.
    """
    upx, upy, downx, downy, px0, px1, py0, py1, flip, gain = cfg
    ax0 = fw - 1 - px0
    ax1 = (in_w - 1) * upx + 1 - out_w * downx + px0
    ay0 = fh - 1 - py0
    ay1 = (in_h - 1) * upy + 1 - out_h * downy + py0
    return (downx, downy, upx, upy, ax0, ax1, ay0, ay1, not flip, gain)


class _Upfirdn2d(torch.autograd.Function):
    # Linear in x, so its backward (another _Upfirdn2d) makes any order of derivative work.
    @staticmethod
    def forward(ctx, x, f, cfg):
        y = _upfirdn_run(x, f, cfg)
        ctx.save_for_backward(f)
        ctx.cfg = cfg
        ctx.sizes = (x.shape[2], x.shape[3], y.shape[2], y.shape[3])
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            acfg = adjoint_cfg(ctx.cfg, f.shape[-1], f.shape[0], *ctx.sizes)
            # Another _Upfirdn2d only when the graph of the gradient is wanted (create_graph).
            dx = _Upfirdn2d.apply(dy, f, acfg) if torch.is_grad_enabled() else _upfirdn_run(dy, f, acfg)
        return dx, None, None


def _as_filter(f, device):
    if f is None:
        return torch.ones([1, 1], dtype=torch.float32, device=device)
    assert f.ndim in (1, 2), "upfirdn2d filters are 1-D (separable) or 2-D"
    if f.dtype == torch.float32 and f.device == device and f.is_contiguous():
        return f
    return f.to(device=device, dtype=torch.float32).contiguous()


def upfirdn2d(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter, gain):
    """CUDA twin of upfirdn2d._upfirdn2d_ref; f is float32, 1-D (separable) or 2-D."""
    assert x.ndim == 4, "upfirdn2d expects [N, C, H, W]"
    cfg = (int(upx), int(upy), int(downx), int(downy), int(padx0), int(padx1), int(pady0), int(pady1),
           bool(flip_filter), float(gain))
    if x.requires_grad and torch.is_grad_enabled():
        return _Upfirdn2d.apply(x, _as_filter(f, x.device), cfg)
    return _upfirdn_run(x, _as_filter(f, x.device), cfg)


# ----------------------------------------------------------------------------------------------
# filtered_lrelu

def _filtered_lrelu_run(x, b, fu, fd, spec):
    """Forward pass without autograd: (output, intermediate z, sign bits, clamp bits)."""
    up, down, px0, px1, py0, py1, gain, slope, clamp, flip = spec
    z, sign, clamped = plugin("filtered_lrelu").up_lrelu(
        x, b, fu, up, px0, px1, py0, py1, flip, float(up * up), gain, slope, clamp)
    return _upfirdn_run(z, fd, (1, 1, down, down, 0, 0, 0, 0, flip, 1.0)), z, sign, clamped


class _FilteredLrelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, fu, fd, spec):
        y, z, sign, clamped = _filtered_lrelu_run(x, b, fu, fd, spec)
        # Only the 2-bit mask of z is kept, not z itself: the backward needs nothing else.
        ctx.save_for_backward(fu, fd, sign, clamped)
        ctx.spec = spec
        ctx.sizes = (x.shape[2], x.shape[3], z.shape[2], z.shape[3], y.shape[2], y.shape[3])
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        fu, fd, sign, clamped = ctx.saved_tensors
        up, down, px0, px1, py0, py1, gain, slope, clamp, flip = ctx.spec
        xh, xw, zh, zw, yh, yw = ctx.sizes
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None, None, None
        dcfg = adjoint_cfg((1, 1, down, down, 0, 0, 0, 0, flip, 1.0), fd.shape[-1], fd.shape[0], zh, zw, yh, yw)
        u, _, _, _, ax0, ax1, ay0, ay1, aflip, again = dcfg
        dz = plugin("filtered_lrelu").masked_grad(dy, fd, u, 1, ax0, ax1, ay0, ay1, aflip, again, gain, slope,
                                                  sign, clamped, zh, zw)
        ucfg = adjoint_cfg((up, up, 1, 1, px0, px1, py0, py1, flip, float(up * up)), fu.shape[-1], fu.shape[0],
                           xh, xw, zh, zw)
        dx = _upfirdn_run(dz, fu, ucfg)
        db = dx.sum([0, 2, 3]) if ctx.needs_input_grad[1] else None
        return (dx if ctx.needs_input_grad[0] else None), db, None, None, None


def filtered_lrelu(x, fu, fd, b, up, down, px0, px1, py0, py1, gain, slope, clamp, flip_filter):
    """CUDA twin of filtered_lrelu._filtered_lrelu_ref (first derivative only)."""
    assert x.ndim == 4, "filtered_lrelu expects [N, C, H, W]"
    if b is not None and (b.dtype != x.dtype or b.device != x.device):
        b = b.to(device=x.device, dtype=x.dtype)
    spec = (int(up), int(down), int(px0), int(px1), int(py0), int(py1), float(gain), float(slope),
            -1.0 if clamp is None else float(clamp), bool(flip_filter))
    fu, fd = _as_filter(fu, x.device), _as_filter(fd, x.device)
    if torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad)):
        return _FilteredLrelu.apply(x, b, fu, fd, spec)
    return _filtered_lrelu_run(x, b, fu, fd, spec)[0]
