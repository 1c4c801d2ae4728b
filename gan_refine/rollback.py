"""Undoing part of a refinement step that met NaN/inf, without allocating at every step.

The refiner reads its NaN/inf checks from the device once per step, before the generator's
weights change but after the fake score's own updates of that step. Those updates are undone
from a copy taken at the start of the step. The copy lives in buffers allocated once (and again
only when the set of tensors changes, e.g. when Adam creates its state on the first update), and
it is refreshed with one `torch._foreach_copy_` per device and dtype, so a step pays a memory
copy and no allocation for its guarantee.
"""

import torch

__all__ = ["TensorRollback"]


def _groups(dst, src):
    """(dst list, src list) pairs, one per (device, dtype), for torch._foreach_copy_."""
    groups = {}
    for d, s in zip(dst, src):
        a, b = groups.setdefault((d.device, d.dtype, s.device, s.dtype), ([], []))
        a.append(d)
        b.append(s)
    return list(groups.values())


class TensorRollback:
    """A restorable copy of modules' parameters and buffers and of optimisers' state.

    snapshot() records them; restore() puts every recorded value back, and drops optimiser state
    that appeared after the snapshot (a first Adam update creates it), so the optimisers behave as
    if the undone updates had never been made.
    """

    def __init__(self, modules, optimizers):
        self.modules = list(modules)
        self.optimizers = list(optimizers)
        self._live, self._saved, self._opt_entries = [], [], None
        self._save_groups = self._restore_groups = []

    def _current(self):
        """The tensors to record (parameters themselves, not views: their identity tells whether
        the copy still fits), and each optimiser's state as {param: {key: value}} with the
        tensors themselves (restore() puts these objects back, refilled)."""
        live = []
        for m in self.modules:
            live += m.parameters()
            live += m.buffers()
        entries = []
        for opt in self.optimizers:
            per_param = {}
            for p, st in opt.state.items():
                per_param[p] = dict(st)
                live += [v for v in st.values() if torch.is_tensor(v)]
            entries.append(per_param)
        return live, entries

    @torch.no_grad()
    def snapshot(self):
        live, entries = self._current()
        same = len(live) == len(self._live) and all(a is b for a, b in zip(live, self._live))
        if not same:  # first call, or Adam has just created its state: (re)allocate
            self._saved = [t.detach().clone() for t in live]
            self._save_groups = _groups(self._saved, live)
            self._restore_groups = _groups(live, self._saved)
            self._live = live
        else:
            for dst, src in self._save_groups:
                torch._foreach_copy_(dst, src)
        self._opt_entries = entries

    @torch.no_grad()
    def restore(self):
        if self._opt_entries is None:
            raise RuntimeError("restore() without a snapshot()")
        for opt, per_param in zip(self.optimizers, self._opt_entries):
            opt.state.clear()
            for p, st in per_param.items():
                opt.state[p] = dict(st)
        for dst, src in self._restore_groups:
            torch._foreach_copy_(dst, src)
