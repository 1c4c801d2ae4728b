"""Resumable state files and atomic writes.

A state file is a `torch.save` of plain containers and tensors only (no pickled classes), so it
loads with `torch.load(weights_only=True)`: resuming never executes code from the file. Every
write goes to a temporary file in the target folder first and is moved into place with
os.replace, so an interrupted or failed write never leaves a half-written file behind and the
previous snapshot stays intact.
"""

import io
import json
import os
import random
import uuid

import numpy as np
import torch

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "save_state",
           "load_state", "capture_global_rng", "restore_global_rng", "STATE_FORMAT"]

STATE_FORMAT = 1


def atomic_write_bytes(path, payload):
    """Write `payload` to `path` so that readers see either the old file or the complete new one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, f"could not write {path}: {err.strerror or err}; the previous file, if "
                                 "any, is untouched (free some disk space or choose another --outdir)") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path, text):
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def capture_global_rng():
    """States of every global RNG a step can touch (dropout uses torch's global generators)."""
    np_state = np.random.get_state()
    state = {
        "torch_cpu": torch.get_rng_state(),
        # numpy's state holds an ndarray; kept as a tensor so weights_only loading accepts it.
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng(state):
    torch.set_rng_state(state["torch_cpu"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_python_state_from_plain(state["python"]))
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda_states = state["torch_cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _python_state_to_plain(s):
    version, internal, gauss = s
    return [version, list(internal), gauss]


def _python_state_from_plain(s):
    version, internal, gauss = s
    return (version, tuple(internal), gauss)


def save_state(path, state):
    """Atomically write a state dict (plain containers and tensors) with torch.save."""
    state = dict(state, format=STATE_FORMAT)
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_state(path, map_location="cpu"):
    """Load a state file written by save_state; raises ValueError for anything else."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "refine-state.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no refiner state file at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for foreign or truncated files
        raise ValueError(f"{path} is not a gan_refine state file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a gan_refine state file (format {STATE_FORMAT})")
    return state
