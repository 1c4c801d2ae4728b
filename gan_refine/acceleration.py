"""Running the refiner's networks faster or in less memory without changing what they compute.

- `CompiledForward`: a network called through `torch.compile` (inductor), compiled on first
  use for each mode it meets (train/eval, with/without gradients) and cached by torch, with a
  fallback to the eager network, and one warning, if compiling fails.
- `checkpointed_blocks`: activation checkpointing (`torch.utils.checkpoint`) of a network's
  blocks for the duration of a forward pass: their activations are recomputed during the
  backward pass instead of being kept, with the random draws (dropout, StyleGAN noise) replayed.

Neither touches the user's modules for longer than a call: exported pickles never hold a
patched forward.
"""

import contextlib
import functools
import warnings

import torch
import torch.utils.checkpoint

__all__ = ["CompiledForward", "checkpointed_blocks", "checkpoint_units", "CHECKPOINT_PARTS"]

CHECKPOINT_PARTS = ("generator", "fake-score", "teacher")


class CompiledForward:
    """Calls `net(*args)` through torch.compile(net), or through `net` itself once compiling
    has failed (one warning). `name` says which network the warning is about."""

    def __init__(self, net, name, **compile_kwargs):
        self.net, self.name = net, name
        # fallback_random: dropout and noise draw from torch's generators exactly as the eager
        # network would, so teacher and fake score still share one dropout mask.
        options = dict(compile_kwargs.pop("options", {}), fallback_random=True)
        self._compiled = torch.compile(net, options=options, **compile_kwargs)
        self.failed = None

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as err:  # any compiler failure: the eager network is the definition
                self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                warnings.warn(f"torch.compile of the {self.name} failed ({self.failed}); running it "
                              f"uncompiled", RuntimeWarning, stacklevel=2)
        return self.net(*args, **kwargs)


def checkpoint_units(net):
    """The submodules checkpointed one by one: those whose class name ends in 'Block' (EDM's
    UNetBlock, StyleGAN2's SynthesisBlock, ...), outermost only; empty when there are none,
    and then the whole network is one unit."""
    units = []

    def visit(module):
        for child in module.children():
            if type(child).__name__.endswith("Block") and any(True for _ in child.parameters()):
                units.append(child)
            else:
                visit(child)
    visit(net)
    return units


def _checkpointed(forward, recompute_context):
    @functools.wraps(forward)
    def call(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        context_fn = (lambda: (contextlib.nullcontext(), recompute_context())) if recompute_context else \
            (lambda: (contextlib.nullcontext(), contextlib.nullcontext()))
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False,
                                                 context_fn=context_fn, **kwargs)
    return call


@contextlib.contextmanager
def checkpointed_blocks(net, enabled=True, recompute_context=None):
    """Inside the block, `net`'s blocks (checkpoint_units) run under activation checkpointing;
    for a network without blocks, calls of `net` itself do. `recompute_context()`: a context
    manager to re-enter while recomputing (the per-rank random draws of a torchrun run)."""
    if not enabled or not isinstance(net, torch.nn.Module):
        yield
        return
    units = checkpoint_units(net) or [net]
    patched = []
    try:
        for m in units:
            # An instance attribute shadows the class's forward for this call only.
            m.forward = _checkpointed(type(m).forward.__get__(m), recompute_context)
            patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward
