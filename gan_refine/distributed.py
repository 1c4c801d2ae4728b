"""torch.distributed plumbing for refinement runs launched by torchrun (or any initialised
process group).

A run on N processes refines with the same global batch as a run on one: every rank draws
the random numbers of the whole batch from identically seeded generators and keeps its own
slice, so latents, labels, noise levels and noise do not depend on the world size. Gradients
are averaged by DistributedDataParallel. Writing outputs (snapshots, state, logs, progress)
is rank 0's job; the other ranks compute and wait.

Backends: nccl on CUDA, gloo on CPU. Every collective has the process group's timeout, so a
rank that dies or stalls makes the others fail with an error instead of waiting forever.
"""

import contextlib
import datetime
import os
import re

import torch
import torch.distributed as tdist
from torch.overrides import TorchFunctionMode

from .config import RunConfig

__all__ = ["Dist", "from_env", "from_group", "DistributedError", "GlobalBatchRandomness",
           "DEFAULT_TIMEOUT_S", "launched_by_torchrun"]

# Seconds a collective may wait for the other ranks (RunConfig.dist_timeout, --dist-timeout).
DEFAULT_TIMEOUT_S = RunConfig().dist_timeout


class DistributedError(RuntimeError):
    """Another rank failed, or could not be reached within the timeout."""


def launched_by_torchrun():
    """True when torchrun (or another launcher using its variables) started this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


class Dist:
    """Rank, world size and process group of this process (world_size 1: no collectives).

    Every collective of a gan_refine run goes through these methods, so a failed peer always
    surfaces as DistributedError with a sentence a person can act on.
    """

    def __init__(self, group=None, owns_group=False, timeout_s=DEFAULT_TIMEOUT_S):
        self.group = group
        self.owns_group = owns_group
        self.timeout_s = timeout_s
        if group is None:
            self.rank, self.world_size = 0, 1
        else:
            self.rank = tdist.get_rank(group)
            self.world_size = tdist.get_world_size(group)
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank if self.world_size > 1 else 0))
        self.backend = tdist.get_backend(group) if group is not None else None

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def describe(self):
        if not self.enabled:
            return "1 process"
        return f"{self.world_size} processes ({self.backend})"

    # -------------------------------------------------------------- collectives

    @contextlib.contextmanager
    def _collective(self, what):
        try:
            yield
        except DistributedError:
            raise
        except (RuntimeError, OSError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            first = re.sub(r"^\[[^\]]*\]\s*", "", first)[:160]  # drop gloo's source-file prefix
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed because another process "
                f"stopped or could not be reached within {self.timeout_s:g} s ({first}); see that "
                f"rank's output for the cause") from err

    def barrier(self, what="waiting for the other processes"):
        if not self.enabled:
            return
        with self._collective(what):
            if self.backend == "gloo":
                # Names the ranks that did not arrive, where a plain barrier would only time out.
                tdist.monitored_barrier(self.group, timeout=datetime.timedelta(seconds=self.timeout_s),
                                        wait_all_ranks=True)
            else:
                tdist.barrier(self.group)

    def broadcast_object(self, obj, src=0, what="sharing a value between processes"):
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        with self._collective(what):
            tdist.broadcast_object_list(box, src=self._global_rank(src), group=self.group)
        return box[0]

    def all_gather_object(self, obj, what="gathering results"):
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        with self._collective(what):
            tdist.all_gather_object(out, obj, group=self.group)
        return out

    def all_reduce(self, tensor, op="sum", what="combining statistics"):
        """In place; returns the tensor. op: 'sum' or 'max'."""
        if not self.enabled:
            return tensor
        red = {"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX}[op]
        with self._collective(what):
            tdist.all_reduce(tensor, op=red, group=self.group)
        return tensor

    def broadcast_tensors(self, tensors, src=0, what="sharing weights"):
        if not self.enabled:
            return
        with self._collective(what):
            for t in tensors:
                tdist.broadcast(t, src=self._global_rank(src), group=self.group)

    def _global_rank(self, rank):
        if self.group is None or self.group is tdist.group.WORLD:
            return rank
        return tdist.get_global_rank(self.group, rank)

    # -------------------------------------------------------------- patterns

    def on_main(self, fn, what):
        """Run fn() on rank 0 only and hand every rank its result. An exception on rank 0 is
        re-raised there and, as the same type with the same message, on every other rank, so
        no rank is left waiting for one that gave up."""
        if not self.enabled:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as err:  # sent to the other ranks, then raised here as well
                error = err
        packet = self.broadcast_object(
            (result, None if error is None else (type(error), str(error))) if self.is_main else None,
            what=what)
        if error is not None:
            raise error
        result, failure = packet
        if failure is not None:
            kind, message = failure
            try:
                raise kind(message)
            except TypeError:  # an exception type whose constructor wants more
                raise RuntimeError(message) from None
        return result

    @contextlib.contextmanager
    def main_first(self, what="waiting for rank 0"):
        """Rank 0 runs the block first (a download into the shared cache, say); the other
        ranks run it after rank 0 has finished, reading what it left."""
        if self.enabled and not self.is_main:
            self._sync_flag(None, what)
        try:
            yield
        except Exception as err:
            if self.enabled and self.is_main:
                self._sync_flag(err, what)
            raise
        if self.enabled and self.is_main:
            self._sync_flag(None, what)

    def _sync_flag(self, error, what):
        # Rank 0 tells the others whether its block succeeded; they proceed or stop with it.
        failure = self.broadcast_object(None if error is None else str(error), what=what) \
            if self.is_main else self.broadcast_object(None, what=what)
        if failure is not None and not self.is_main:
            raise DistributedError(f"rank 0 failed while {what}: {failure}")

    def close(self):
        if self.owns_group and tdist.is_initialized():
            with contextlib.suppress(Exception):
                tdist.destroy_process_group()
            self.owns_group = False


def from_group(group=None, timeout_s=DEFAULT_TIMEOUT_S):
    """A Dist for an initialised process group (the Python API's way in); None = the default
    group when one is initialised, else a single process."""
    if group is None and tdist.is_available() and tdist.is_initialized():
        group = tdist.group.WORLD
    if group is None:
        return Dist()
    return Dist(group, owns_group=False, timeout_s=timeout_s)


def from_env(device="auto", timeout_s=DEFAULT_TIMEOUT_S):
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT); a single process when there is none.

    Returns (Dist, device string): with CUDA each process takes the GPU of its LOCAL_RANK.
    """
    if not launched_by_torchrun():
        return from_group(None, timeout_s), device
    if tdist.is_initialized():
        return Dist(tdist.group.WORLD, owns_group=False, timeout_s=timeout_s), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device == "auto" or str(device).startswith("cuda"))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but this machine has only "
                             f"{torch.cuda.device_count()} CUDA devices; start at most that many "
                             f"processes per node (--nproc_per_node)")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    elif device == "auto":
        device = "cpu"
    backend = "nccl" if use_cuda else "gloo"
    try:
        tdist.init_process_group(backend, init_method="env://",
                                 timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise DistributedError(f"could not join the process group of {os.environ.get('WORLD_SIZE')} "
                               f"processes ({first}); check the torchrun rendezvous settings") from err
    return Dist(tdist.group.WORLD, owns_group=True, timeout_s=timeout_s), device


# ---------------------------------------------------------------------------- randomness

def _size_arg(args, kwargs, start):
    """The size of a factory call: torch.randn(2, 3), torch.randn([2, 3]) or size=[2, 3]."""
    if "size" in kwargs:
        return list(kwargs["size"]), None
    rest = args[start:]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple, torch.Size)):
        return list(rest[0]), start
    if rest and all(isinstance(v, int) for v in rest):
        return list(rest), start
    return None, None


class GlobalBatchRandomness(TorchFunctionMode):
    """Inside a network's forward on one rank, draw every per-sample random tensor (StyleGAN's
    noise inputs, dropout masks, label dropout) for the whole global batch and keep this rank's
    slice.

    The global RNG is seeded identically on every rank, so each rank consumes the generator
    exactly as a single process running the whole batch would, and its slice holds the very
    numbers that process would have used for these samples. A draw counts as per-sample when
    its leading dimension equals the local batch; other draws are left alone. On CPU dropout
    is rebuilt the way PyTorch's CPU kernel makes it (a Bernoulli mask divided by 1 - p), so a
    run on N processes matches one process to float rounding; CUDA's fused dropout draws in
    another order, so there the masks are valid but not those of a one-GPU run.
    """

    _FACTORIES = {torch.randn: 0, torch.rand: 0}
    _LIKE = (torch.randn_like, torch.rand_like)
    _INPLACE = {"normal_", "uniform_", "bernoulli_", "exponential_", "log_normal_", "cauchy_",
                "geometric_"}

    def __init__(self, local, world, rank):
        super().__init__()
        self.local, self.total, self.offset = int(local), int(local) * int(world), int(local) * int(rank)

    def _mine(self, t):
        return t[self.offset:self.offset + self.local].clone()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self._FACTORIES:
            size, pos = _size_arg(args, kwargs, self._FACTORIES[func])
            if size and size[0] == self.local:
                size[0] = self.total
                if pos is None:
                    kwargs["size"] = size
                    return self._mine(func(*args, **kwargs))
                return self._mine(func(*args[:pos], size, **kwargs))
        elif func in self._LIKE:
            t = args[0]
            if t.ndim and t.shape[0] == self.local:
                kwargs.setdefault("dtype", t.dtype)
                kwargs.setdefault("device", t.device)
                kwargs.pop("memory_format", None)
                base = torch.randn if func is torch.randn_like else torch.rand
                return self._mine(base([self.total, *t.shape[1:]], **kwargs))
        elif getattr(func, "__name__", "") in self._INPLACE and args and torch.is_tensor(args[0]):
            t = args[0]
            scalar_args = all(not torch.is_tensor(a) for a in args[1:])
            if t.ndim and t.shape[0] == self.local and scalar_args:
                full = t.new_empty([self.total, *t.shape[1:]])
                getattr(full, func.__name__)(*args[1:], **kwargs)
                with torch.no_grad():
                    t.copy_(full[self.offset:self.offset + self.local])
                return t
        elif func in (torch.nn.functional.dropout, torch.dropout):
            return self._dropout(func, args, kwargs)
        return func(*args, **kwargs)

    def _dropout(self, func, args, kwargs):
        names = ("input", "p", "training", "inplace") if func is torch.nn.functional.dropout \
            else ("input", "p", "train")
        given = dict(zip(names, args), **kwargs)
        x = given["input"]
        p = float(given.get("p", 0.5))
        training = given.get("training", given.get("train", True))
        inplace = bool(given.get("inplace", False))
        if not training or p == 0 or not x.ndim or x.shape[0] != self.local:
            return func(*args, **kwargs)
        if p >= 1:
            return x.mul_(0) if inplace else x * 0
        mask = x.new_empty([self.total, *x.shape[1:]]).bernoulli_(1 - p)
        mask = mask[self.offset:self.offset + self.local].div_(1 - p)
        return x.mul_(mask) if inplace else x * mask
