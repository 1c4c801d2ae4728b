"""conv2d / conv_transpose2d that can skip weight gradients, with full double-backward support.

GAN training computes R1-style penalties by differentiating the discriminator w.r.t. its input
with `create_graph=True` and then differentiating again. The weight gradient of that first
backward pass is never used, so `no_weight_gradients()` lets the custom op skip it. The weights
still receive their (second-order) gradient from the penalty itself.

The custom op runs when `enabled` is True (training code sets it), on any device; otherwise the
functions are plain torch.nn.functional calls and `no_weight_gradients()` has no effect.
"""

import contextlib

import torch
import torch.nn.functional as F

enabled = False
weight_gradients_disabled = False


@contextlib.contextmanager
def no_weight_gradients(disable=True):
    """Within the block, backward passes through the custom op return no weight gradient."""
    global weight_gradients_disabled  # pylint: disable=global-statement
    previous = weight_gradients_disabled
    if disable:
        weight_gradients_disabled = True
    try:
        yield
    finally:
        weight_gradients_disabled = previous


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # pylint: disable=redefined-builtin
    if _should_use_custom_op(input, padding):
        cfg = _make_config(False, weight, stride, padding, dilation, 0, groups)
        return _Convolution.apply(input, weight, bias, cfg)
    return F.conv2d(input=input, weight=weight, bias=bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):  # pylint: disable=redefined-builtin
    if _should_use_custom_op(input, padding):
        cfg = _make_config(True, weight, stride, padding, dilation, output_padding, groups)
        return _Convolution.apply(input, weight, bias, cfg)
    return F.conv_transpose2d(input=input, weight=weight, bias=bias, stride=stride, padding=padding,
                              output_padding=output_padding, groups=groups, dilation=dilation)


def _should_use_custom_op(input, padding):  # pylint: disable=redefined-builtin
    # String paddings ('same', 'valid') only exist for the plain op.
    return enabled and isinstance(input, torch.Tensor) and not isinstance(padding, str)


def _pair(value):
    if isinstance(value, (list, tuple)):
        assert len(value) == 2
        return tuple(int(v) for v in value)
    return (int(value), int(value))


def _make_config(transpose, weight, stride, padding, dilation, output_padding, groups):
    assert weight.ndim == 4, "conv2d_gradfix supports 2-D convolutions only"
    return (bool(transpose), _pair(stride), _pair(padding), _pair(dilation), _pair(output_padding), int(groups))


class _Convolution(torch.autograd.Function):
    """aten.convolution whose backward honours `weight_gradients_disabled`.

    The backward pass is itself built from differentiable ops (aten.convolution_backward has a
    derivative), so higher-order gradients work for input, weight and bias alike.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, cfg):  # pylint: disable=arguments-differ,redefined-builtin
        transpose, stride, padding, dilation, output_padding, groups = cfg
        ctx.save_for_backward(input, weight)
        ctx.cfg = cfg
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        return torch.ops.aten.convolution(input, weight, bias, list(stride), list(padding), list(dilation),
                                          transpose, list(output_padding), groups)

    @staticmethod
    def backward(ctx, grad_output):  # pylint: disable=arguments-differ
        input, weight = ctx.saved_tensors  # pylint: disable=redefined-builtin
        transpose, stride, padding, dilation, output_padding, groups = ctx.cfg
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_weight = need_weight and not weight_gradients_disabled
        if not (need_input or need_weight or need_bias):
            return None, None, None, None
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_output, input, weight, ctx.bias_sizes, list(stride), list(padding), list(dilation),
            transpose, list(output_padding), groups, [need_input, need_weight, need_bias and ctx.bias_sizes is not None])
        return (grad_input if need_input else None,
                grad_weight if need_weight else None,
                grad_bias if need_bias else None,
                None)
