"""Running the refiner's networks faster or in less memory without changing what they compute.

- `CompiledForward`: a network called through `torch.compile` (inductor), compiled on first
  use for each mode it meets (train/eval, with/without gradients) and cached by torch, with a
  fallback to the eager network, and one warning, if compiling fails. `COMPILE_MODES` are
  torch.compile's modes; those with CUDA graphs ('reduce-overhead', 'max-autotune') replay
  each compiled graph as one CUDA graph.
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

__all__ = ["CompiledForward", "checkpointed_blocks", "checkpoint_units", "CHECKPOINT_PARTS", "COMPILE_MODES",
           "compile_mode", "mode_uses_cudagraphs"]

CHECKPOINT_PARTS = ("generator", "fake-score", "teacher")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_mode(compile):
    """The torch.compile mode a Refiner's `compile` argument names (False/None: None; True:
    'default'), or ValueError."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return "default"
    if compile in COMPILE_MODES:
        return compile
    raise ValueError(f"compile must be True, False or one of {', '.join(COMPILE_MODES)}; got {compile!r}")


def mode_uses_cudagraphs(mode):
    return mode in _CUDAGRAPH_MODES


def _mode_options(mode):
    """inductor's options for a torch.compile mode (torch.compile takes a mode or options, not
    both, and the refiner always sets fallback_random)."""
    if mode in (None, "default"):
        return {}
    try:
        from torch._inductor import list_mode_options
        return dict(list_mode_options(mode))
    except (ImportError, AttributeError, RuntimeError):  # an older layout: the two flags that matter
        return {"triton.cudagraphs": mode_uses_cudagraphs(mode), "max_autotune": mode.startswith("max-autotune")}


class CompiledForward:
    """Calls `net(*args)` through torch.compile(net), or through `net` itself once compiling
    has failed (one warning). `name` says which network the warning is about."""

    def __init__(self, net, name, mode=None, **compile_kwargs):
        self.net, self.name, self.mode = net, name, mode
        # fallback_random: dropout and noise draw from torch's generators exactly as the eager
        # network would, so teacher and fake score still share one dropout mask.
        options = dict(_mode_options(mode), **compile_kwargs.pop("options", {}), fallback_random=True)
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
