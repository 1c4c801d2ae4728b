"""Small tensor and module helpers that network code embedded in pickles calls by name."""

import contextlib
import functools
import re
import warnings

import numpy as np
import torch

import dnnlib

# ----------------------------------------------------------------------------
# Cached constants.

_constant_cache = {}


def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """Return a tensor holding `value` (broadcast to `shape`), reusing one per distinct request.

    Network code calls this inside forward passes for things like filter taps; caching avoids a
    host-to-device copy on every call. Callers must not modify the returned tensor in place.
    """
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    device = torch.device("cpu") if device is None else torch.device(device)
    if memory_format is None:
        memory_format = torch.contiguous_format

    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    cached = _constant_cache.get(key)
    if cached is None:
        cached = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            # Broadcast *together* with `shape` (not expand to it): a value with more or larger
            # dimensions than `shape` keeps them, as in network code written for upstream.
            cached = cached.expand(torch.broadcast_shapes(tuple(cached.shape), shape))
        cached = cached.contiguous(memory_format=memory_format)
        _constant_cache[key] = cached
    return cached


def const_like(ref, value, shape=None, dtype=None, device=None, memory_format=None):
    """constant() with dtype and device defaulting to those of tensor `ref` (EDM's helper)."""
    if dtype is None:
        dtype = ref.dtype
    if device is None:
        device = ref.device
    return constant(value, shape=shape, dtype=dtype, device=device, memory_format=memory_format)


def nan_to_num(input, nan=0.0, posinf=None, neginf=None, *, out=None):  # pylint: disable=redefined-builtin
    return torch.nan_to_num(input, nan=nan, posinf=posinf, neginf=neginf, out=out)


# Assertion that survives torch.jit tracing as a graph op instead of a Python-level check.
symbolic_assert = torch._assert  # pylint: disable=protected-access

# ----------------------------------------------------------------------------
# Shape checks.


@contextlib.contextmanager
def suppress_tracer_warnings():
    """Context manager that silences torch.jit.TracerWarning (e.g. tensor-to-bool conversions).

    Network code enters this several times per forward pass, so it must not use
    warnings.catch_warnings: leaving that resets the registry of already-shown warnings, and
    every once-per-location warning would then be repeated on each forward. Only our own
    filter entry is added and taken out again; the rest of the filter list is left alone.
    """
    entry = ("ignore", None, torch.jit.TracerWarning, None, 0)
    warnings.filters.insert(0, entry)
    try:
        yield
    finally:
        try:
            warnings.filters.remove(entry)
        except ValueError:
            pass  # someone replaced the filter list inside the block; nothing of ours to remove


def assert_shape(tensor, ref_shape):
    """Raise AssertionError unless `tensor.shape` matches `ref_shape` (None entries match anything).

    Sizes may be tensors while tracing; those are checked with a traced assertion.
    """
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f"Wrong number of dimensions: got {tensor.ndim}, expected {len(ref_shape)}")
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        if ref_size is None:
            continue
        if isinstance(ref_size, torch.Tensor) or isinstance(size, torch.Tensor):
            with suppress_tracer_warnings():
                same = torch.equal(torch.as_tensor(size), torch.as_tensor(ref_size))
                symbolic_assert(same, f"Wrong size for dimension {idx}")
        elif size != ref_size:
            raise AssertionError(f"Wrong size for dimension {idx}: got {size}, expected {ref_size}")


def profiled_function(fn):
    """Decorator: run `fn` inside a profiler range named after it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------
# Data loading.


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless stream of dataset indices, split between `num_replicas` ranks.

    With shuffling, the order starts as one random permutation and is then perturbed gradually:
    after visiting position i, the item there swaps with a random item at most `window_size`
    (fraction of the dataset) positions earlier, so successive epochs differ without reshuffling.
    """

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5):
        assert len(dataset) > 0
        assert num_replicas > 0
        assert 0 <= rank < num_replicas
        assert 0 <= window_size <= 1
        super().__init__()
        self.dataset = dataset
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size

    def __iter__(self):
        order = np.arange(len(self.dataset))
        rnd = None
        window = 0
        if self.shuffle:
            rnd = np.random.RandomState(self.seed)
            rnd.shuffle(order)
            window = int(np.rint(order.size * self.window_size))

        step = 0
        while True:
            pos = step % order.size
            if step % self.num_replicas == self.rank:
                yield order[pos]
            if window >= 2:
                other = (pos - rnd.randint(window)) % order.size
                order[pos], order[other] = order[other], order[pos]
            step += 1


# ----------------------------------------------------------------------------
# Parameters and buffers.


def params_and_buffers(module):
    assert isinstance(module, torch.nn.Module)
    return list(module.parameters()) + list(module.buffers())


def named_params_and_buffers(module):
    assert isinstance(module, torch.nn.Module)
    return list(module.named_parameters()) + list(module.named_buffers())


@torch.no_grad()
def copy_params_and_buffers(src_module, dst_module, require_all=False):
    """Copy every parameter/buffer of `dst_module` that `src_module` has under the same name.

    With `require_all`, a name missing from the source is an error. The destination keeps its
    own tensors (and their requires_grad flags); only values are copied.
    """
    assert isinstance(src_module, torch.nn.Module)
    assert isinstance(dst_module, torch.nn.Module)
    src_tensors = dict(named_params_and_buffers(src_module))
    for name, tensor in named_params_and_buffers(dst_module):
        if name in src_tensors:
            tensor.copy_(src_tensors[name].detach()).requires_grad_(tensor.requires_grad)
        elif require_all:
            raise AssertionError(f"{name} is missing from the source module")


# ----------------------------------------------------------------------------
# Distributed training.


@contextlib.contextmanager
def ddp_sync(module, sync):
    """Skip DistributedDataParallel's gradient all-reduce inside the block unless `sync`."""
    assert isinstance(module, torch.nn.Module)
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield


def check_ddp_consistency(module, ignore_regex=None):
    """Assert that every parameter/buffer equals rank 0's copy (NaNs compare equal)."""
    assert isinstance(module, torch.nn.Module)
    for name, tensor in named_params_and_buffers(module):
        fullname = type(module).__name__ + "." + name
        if ignore_regex is not None and re.fullmatch(ignore_regex, fullname):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = nan_to_num(tensor)
        other = tensor.clone()
        torch.distributed.broadcast(tensor=other, src=0)
        assert (tensor == other).all(), fullname


# ----------------------------------------------------------------------------
# Module summary.


def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True):
    """Run `module(*inputs)` once and print a table of submodules, their sizes and outputs.

    Each parameter, buffer and output tensor is counted once, under the first (innermost)
    module that reports it; with `skip_redundant`, modules left with nothing are omitted.
    Returns the module's outputs.
    """
    assert isinstance(module, torch.nn.Module)
    assert not isinstance(module, torch.jit.ScriptModule)
    assert isinstance(inputs, (tuple, list))

    records = []  # in the order forward calls finish, i.e. children before parents
    depth = [0]

    def on_enter(_mod, _inputs):
        depth[0] += 1

    def on_exit(mod, _inputs, outputs):
        depth[0] -= 1
        if depth[0] <= max_nesting:
            outs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
            records.append(dnnlib.EasyDict(mod=mod, outputs=[t for t in outs if isinstance(t, torch.Tensor)]))

    handles = []
    for mod in module.modules():
        handles.append(mod.register_forward_pre_hook(on_enter))
        handles.append(mod.register_forward_hook(on_exit))
    try:
        outputs = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()

    seen = set()
    for rec in records:
        rec.unique_params = [t for t in rec.mod.parameters() if id(t) not in seen]
        rec.unique_buffers = [t for t in rec.mod.buffers() if id(t) not in seen]
        rec.unique_outputs = [t for t in rec.outputs if id(t) not in seen]
        seen.update(id(t) for t in rec.unique_params + rec.unique_buffers + rec.unique_outputs)
    if skip_redundant:
        records = [r for r in records if r.unique_params or r.unique_buffers or r.unique_outputs]

    names = {mod: name for name, mod in module.named_modules()}
    header = [type(module).__name__, "Parameters", "Buffers", "Output shape", "Datatype"]
    rows = [header, ["---"] * len(header)]
    total_params = total_buffers = 0
    for rec in records:
        name = "<top-level>" if rec.mod is module else names[rec.mod]
        n_params = sum(t.numel() for t in rec.unique_params)
        n_buffers = sum(t.numel() for t in rec.unique_buffers)
        total_params += n_params
        total_buffers += n_buffers
        shapes = [str(list(t.shape)) for t in rec.outputs] or ["-"]
        dtypes = [str(t.dtype).split(".")[-1] for t in rec.outputs] or ["-"]
        for i, (shape, dtype) in enumerate(zip(shapes, dtypes)):
            label = name + (f":{i}" if len(rec.outputs) >= 2 else "")
            if i == 0:
                rows.append([label, str(n_params) if n_params else "-", str(n_buffers) if n_buffers else "-", shape, dtype])
            else:
                rows.append([label, "-", "-", shape, dtype])
    rows.append(["---"] * len(header))
    rows.append(["Total", str(total_params), str(total_buffers), "-", "-"])

    widths = [max(len(cell) for cell in column) for column in zip(*rows)]
    print()
    for row in rows:
        print("  ".join(cell + " " * (width - len(cell)) for cell, width in zip(row, widths)))
    print()
    return outputs
