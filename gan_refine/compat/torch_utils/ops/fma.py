"""Fused multiply-add `a * b + c` with broadcasting."""

import torch


def fma(a, b, c):
    """Return `a * b + c`, broadcasting all three.

    torch.addcmul evaluates this in one pass without materialising `a * b`; its autograd
    reduces each gradient back to the shape of its own input and supports double backward.
    """
    return torch.addcmul(c, a, b)
