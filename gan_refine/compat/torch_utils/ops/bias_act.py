"""Bias + activation + gain + clamp in one call (`impl='cuda'` uses a fused kernel when available)."""

import numpy as np
import torch
import torch.nn.functional as F

import dnnlib

from .. import misc


def _swish(x, **_):
    return torch.sigmoid(x) * x


# Each entry: default alpha and gain, the kernel's activation index, the pure-PyTorch function
# and whether the fused kernel supports a second derivative (the reference path always does).
activation_funcs = {
    "linear": dnnlib.EasyDict(func=lambda x, **_: x, def_alpha=0, def_gain=1, cuda_idx=1, ref="", has_2nd_grad=False),
    "relu": dnnlib.EasyDict(func=lambda x, **_: F.relu(x), def_alpha=0, def_gain=np.sqrt(2), cuda_idx=2, ref="y", has_2nd_grad=False),
    "lrelu": dnnlib.EasyDict(func=lambda x, alpha, **_: F.leaky_relu(x, alpha), def_alpha=0.2, def_gain=np.sqrt(2), cuda_idx=3, ref="y", has_2nd_grad=False),
    "tanh": dnnlib.EasyDict(func=lambda x, **_: torch.tanh(x), def_alpha=0, def_gain=1, cuda_idx=4, ref="y", has_2nd_grad=True),
    "sigmoid": dnnlib.EasyDict(func=lambda x, **_: torch.sigmoid(x), def_alpha=0, def_gain=1, cuda_idx=5, ref="y", has_2nd_grad=True),
    "elu": dnnlib.EasyDict(func=lambda x, **_: F.elu(x), def_alpha=0, def_gain=1, cuda_idx=6, ref="y", has_2nd_grad=True),
    "selu": dnnlib.EasyDict(func=lambda x, **_: F.selu(x), def_alpha=0, def_gain=1, cuda_idx=7, ref="y", has_2nd_grad=True),
    "softplus": dnnlib.EasyDict(func=lambda x, **_: F.softplus(x), def_alpha=0, def_gain=1, cuda_idx=8, ref="y", has_2nd_grad=True),
    "swish": dnnlib.EasyDict(func=_swish, def_alpha=0, def_gain=np.sqrt(2), cuda_idx=9, ref="x", has_2nd_grad=True),
}
# `ref` names the tensor the kernel's backward pass reads ('x' = input, 'y' = output, '' = none).


_plugin = None  # the loaded CUDA plugin once _init() succeeded


def _init():
    """Build the CUDA kernels now instead of on first use; True when they are available."""
    global _plugin  # pylint: disable=global-statement
    if _plugin is None:
        from . import _load_plugin
        _plugin = _load_plugin("bias_act")
    return _plugin is not None


def _resolve(act, alpha, gain, clamp):
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp) if clamp is not None and clamp >= 0 else None
    return spec, alpha, gain, clamp


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="cuda"):
    """Compute `clamp(act(x + b, alpha) * gain, -clamp, clamp)`.

    Args:
        x: input tensor of any shape.
        b: optional 1-D bias, added along dimension `dim` (its length must equal `x.shape[dim]`).
        act: a key of `activation_funcs`.
        alpha: activation parameter (only 'lrelu' uses it); None = the activation's default.
        gain: output scale; None = the activation's default (sqrt(2) for relu-like ones).
        clamp: clamp the result to [-clamp, clamp]; None (or negative) = no clamping. The gradient
            is zero wherever the clamp is active.
        impl: 'cuda' to use the fused kernel when possible, 'ref' for the PyTorch reference.
    """
    assert isinstance(x, torch.Tensor)
    assert impl in ("ref", "cuda")
    assert act in activation_funcs, f"unknown activation {act!r}"
    if b is not None:
        assert isinstance(b, torch.Tensor) and b.ndim == 1
        assert 0 <= dim < x.ndim
        assert b.shape[0] == x.shape[dim]
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)

    from . import _cuda
    if _cuda.use_cuda("bias_act", impl, x):
        return _cuda.bias_act(x, b, dim, act, alpha, gain, clamp)
    return _bias_act_ref(x=x, b=b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)


@misc.profiled_function
def _bias_act_ref(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """Pure PyTorch bias_act(); same arguments (code written for upstream may call it directly)."""
    assert isinstance(x, torch.Tensor)
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    if b is not None:
        assert isinstance(b, torch.Tensor) and b.ndim == 1
        assert 0 <= dim < x.ndim
        assert b.shape[0] == x.shape[dim]
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha=alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x
