"""Resumable state files, atomic writes and append-only JSON-lines logs.

A state file is a `torch.save` of plain containers and tensors only (no pickled classes), so it
loads with `torch.load(weights_only=True)`: resuming never executes code from the file. Every
write goes to a temporary file in the target folder first and is moved into place with
os.replace (then the folder is fsynced), so an interrupted or failed write never leaves a
half-written file behind and the previous snapshot stays intact. Temporary files are named
`.{name}.tmp-{host}-{pid}-{random}`; `clean_stale_temp_files` removes those whose writer is gone.

Logs (`stats.jsonl`, `metrics.jsonl`) are appended in place, one line per record, and are safe
against a kill in the middle of a line: `append_jsonl` cuts a torn last line before appending,
and `read_jsonl` ignores one.
"""

import errno
import io
import json
import os
import random
import re
import shutil
import socket
import stat
import time
import uuid
import zipfile
import zlib

import numpy as np
import torch

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "save_state",
           "load_state", "capture_global_rng", "restore_global_rng", "STATE_FORMAT", "STATE_FILE",
           "REQUIRED_KEYS", "OutputWriteError", "StateFileError", "JsonlError",
           "clean_stale_temp_files", "check_free_space", "format_bytes", "append_jsonl",
           "read_jsonl", "describe_state_mismatch"]

STATE_FORMAT = 1
STATE_FILE = "refine-state.pt"
# What a refiner needs to continue; scaler_G / scaler_fake are optional (None without AMP).
REQUIRED_KEYS = ("config", "step", "nimg", "G", "G_ema", "fake_score", "opt_G", "opt_fake", "rng")


class OutputWriteError(OSError):
    """A file could not be written; the one-line message names it, says why and what to do."""

    def __init__(self, code, message, filename=None):
        super().__init__(code, message)
        self.filename = filename

    def __str__(self):
        return self.strerror


class StateFileError(ValueError):
    """A file given as a refiner state is not one, or not a complete one of this version."""


class JsonlError(ValueError):
    """A JSON-lines log is damaged before its last line."""


# ----------------------------------------------------------------------------
# Sizes and write errors.

def format_bytes(n):
    """`n` bytes as a short decimal figure: '640 kB', '12.3 MB', '1.25 GB', '2.00 TB'."""
    n = int(n)
    if n < 1_000_000:
        return f"{n / 1e3:.0f} kB" if n >= 1000 else f"{n} bytes"
    if n < 1_000_000_000:
        return f"{n / 1e6:.1f} MB"
    if n < 1_000_000_000_000:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e12:.2f} TB"


def _existing_folder(folder):
    """The nearest existing ancestor of `folder`: disk_usage needs a path that exists."""
    folder = os.path.abspath(folder)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def _free_bytes(folder):
    try:
        return shutil.disk_usage(_existing_folder(folder)).free
    except OSError:
        return None


_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way of a folder on the path",
}


def _write_error(path, err, size, kept):
    """One line for an OSError met while writing `size` bytes to `path`; `kept` says what
    survived (callers differ: a replaced file vs an appended log)."""
    code = err.errno
    reason = _REASONS.get(code) or (err.strerror or str(err) or type(err).__name__).rstrip(".")
    folder = os.path.dirname(os.path.abspath(path))
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = _free_bytes(folder)
        figures = f"{format_bytes(size)} to write"
        reason += f" ({figures})" if free is None else f" ({format_bytes(free)} free in {folder}, {figures})"
        advice = "free some space or choose another output folder (--outdir)"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "choose a folder you can write to (--outdir)"
    else:
        advice = "check the folder, or choose another output folder (--outdir)"
    return OutputWriteError(code, f"could not write {path}: {reason}; {kept}; {advice}", path)


def check_free_space(folder, need_bytes, what="the first snapshot and state"):
    """Raise OutputWriteError (one line, both figures) if `folder` has less than `need_bytes`
    free. `folder` need not exist yet. Returns the free bytes (None if they cannot be read)."""
    free = _free_bytes(folder)
    if free is not None and free < need_bytes:
        raise OutputWriteError(
            errno.ENOSPC, f"not enough free space in {os.path.abspath(folder)} for {what}: "
            f"{format_bytes(free)} free, {format_bytes(need_bytes)} needed; free some space or "
            "choose another output folder (--outdir)", folder)
    return free


# ----------------------------------------------------------------------------
# Atomic writes and their temporary files.

# The host part lets a cleaner tell its own machine's writers (whose pid it can check) from
# writers on other machines sharing the folder over NFS (whose pid means nothing here).
_HOST_TAG = f"{zlib.crc32(socket.gethostname().encode()) & 0xffffff:06x}"
# Also matches `.{name}.tmp-{8 hex}`, the names earlier versions used.
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.tmp-(?:(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-)?[0-9a-f]{8}$")


def _temp_name(basename):
    return f".{basename}.tmp-{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid):
    if os.name == "nt":
        return True  # os.kill(pid, 0) would send CTRL_C_EVENT there; rely on the file's age
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: alive, someone else's
    return True


def _is_stale(match, age_s, older_than_s):
    """A temp file is stale when its writer is provably dead, or when it has not been written to
    for `older_than_s` (a live writer keeps its mtime fresh; this also covers reused pids,
    other hosts and old-style names)."""
    if age_s > older_than_s:
        return True
    pid = match.group("pid")
    if pid is None or match.group("host") != _HOST_TAG or int(pid) == os.getpid():
        return False
    return not _pid_alive(int(pid))


def clean_stale_temp_files(folder, older_than_s=3600.0):
    """Remove leftover temporary files of our atomic writes in `folder` (not below it).

    Only names of our pattern are touched, only regular files, and only when stale (see
    _is_stale). Returns the removed paths; files that cannot be removed are left and skipped.
    """
    removed = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return removed
    now = time.time()
    for name in names:
        match = _TEMP_RE.match(name)
        if match is None:
            continue
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and _is_stale(match, now - st.st_mtime, older_than_s):
                os.remove(path)
                removed.append(path)
        except OSError:
            continue  # vanished meanwhile (its writer finished) or not ours to remove
    return removed


def _write_all(fd, payload):
    view = memoryview(payload).cast("B")
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(folder):
    """Make a rename durable: without it a power cut can undo os.replace on ext4/xfs."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync folders; the rename itself has happened
    finally:
        os.close(fd)


def _discard(path):
    try:
        os.remove(path)
    except OSError:
        pass


def atomic_write_bytes(path, payload):
    """Write `payload` to `path` so that readers see either the old file or the complete new one.

    Raises OutputWriteError (an OSError; one line naming the file and the reason, with the free
    space for a full disk); then no temporary file is left and any previous file is untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    kept = "nothing was written and the previous file, if any, is untouched"
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise _write_error(path, err, len(payload), kept) from err
    tmp = os.path.join(folder, _temp_name(os.path.basename(path)))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            _write_all(fd, payload)
            os.fsync(fd)  # network file systems may report a full disk only here
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:  # also Ctrl-C mid-write: never leave the temp file behind
        _discard(tmp)
        if isinstance(err, OSError):
            raise _write_error(path, err, len(payload), kept) from err
        raise
    _fsync_dir(folder)
    return path


def atomic_write_text(path, text):
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------
# JSON-lines logs.

def _lock(fd):
    """Serialise appenders on POSIX, so one never mistakes another's line in progress for a
    torn one. Elsewhere one writer per file is assumed."""
    try:
        import fcntl
    except ImportError:
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def _is_record(raw):
    """True if `raw` is one complete JSON object. A cut-off object never is: its closing brace
    is its last character."""
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def _pread(fd, n, offset):
    os.lseek(fd, offset, os.SEEK_SET)  # not os.pread: Windows lacks it
    return os.read(fd, n)


def _repair_tail(fd):
    """Make the file end with a newline; returns its new size.

    An unterminated last line that is a complete record gets its newline; anything else after
    the last newline is the remainder of a write cut short and is truncated away.
    """
    size = os.fstat(fd).st_size
    if size == 0 or _pread(fd, 1, size - 1) == b"\n":
        return size
    cut, pos = 0, size
    while pos > 0:
        start = max(0, pos - (1 << 16))
        found = _pread(fd, pos - start, start).rfind(b"\n")
        if found >= 0:
            cut = start + found + 1
            break
        pos = start
    if _is_record(_pread(fd, size - cut, cut)):
        os.lseek(fd, size, os.SEEK_SET)
        _write_all(fd, b"\n")
        return size + 1
    os.ftruncate(fd, cut)
    return cut


def append_jsonl(path, record):
    """Append `record` (a dict) to the JSON-lines file `path` as one line, durably.

    A torn last line (from a kill or a full disk) is repaired first. Raises OutputWriteError if
    the line cannot be written; the file then holds exactly its earlier complete lines.
    """
    if not isinstance(record, dict):
        raise TypeError(f"append_jsonl expects a dict, got {type(record).__name__}")
    path = os.fspath(path)
    line = (json.dumps(record) + "\n").encode("utf-8")
    kept = "the line was not added and earlier lines are intact"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise _write_error(path, err, len(line), kept) from err
    try:
        _lock(fd)
        size = _repair_tail(fd)
        try:
            os.lseek(fd, size, os.SEEK_SET)
            _write_all(fd, line)
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)  # a half line would be torn; leave the complete ones only
            raise
    except OSError as err:
        raise _write_error(path, err, len(line), kept) from err
    finally:
        os.close(fd)
    return path


def read_jsonl(path, missing_ok=False):
    """The records of a JSON-lines file, in order.

    An unterminated last line that does not parse is a write cut short and is ignored. A bad
    line before it raises JsonlError naming the file and line. A missing file raises
    FileNotFoundError, or gives [] with `missing_ok`.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise FileNotFoundError(f"no such log file: {path}") from None
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when the file ends with a newline
    records = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            records.append(json.loads(raw))
        except ValueError as err:
            reason = getattr(err, "msg", None) or type(err).__name__
            raise JsonlError(f"{path} is damaged at line {number} of {len(lines) + bool(last)} "
                             f"(not valid JSON: {reason}); move the file aside or delete that "
                             "line") from err
    if last.strip() and _is_record(last):
        records.append(json.loads(last))
    return records


# ----------------------------------------------------------------------------
# Global RNG state.

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


# ----------------------------------------------------------------------------
# State files.

def save_state(path, state):
    """Atomically write a state dict (plain containers and tensors) with torch.save."""
    state = dict(state, format=STATE_FORMAT)
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _why_torch_refused(err):
    """What a zip that torch.load(weights_only=True) refused holds, in a few words.

    torch's own message advises weights_only=False or allow-listing globals, i.e. running the
    file's code: never repeat it here.
    """
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"it is a torch.save file that holds Python objects ({found.group(1)}), not only "
                "tensors and plain containers")
    # First sentence only: torch and miniz go on with advice for their own developers.
    tail = text.split("WeightsUnpickler error:", 1)[-1]
    first = next((ln.strip() for ln in tail.splitlines() if ln.strip()), "")
    reason = re.sub(r"^\[Errno \d+\] ", "", first.split(". ")[0])[:120]
    if not reason or re.search(r"weights.only|safe_globals", reason, re.IGNORECASE):
        reason = "its contents cannot be read as data"
    return f"it is a damaged or truncated torch.save file ({reason})"


def _not_a_state(path, why):
    return StateFileError(f"{path} is not a gan_refine {STATE_FILE}: {why}; it was not loaded, "
                          "because state files are loaded as data only and never run code")


def _load_data_only(path, map_location):
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise StateFileError(f"{path} is empty (0 bytes), not a gan_refine {STATE_FILE}")
    # save_state always writes torch's zip format; nothing else is handed to an unpickler.
    if head[:1] == b"\x80":
        raise _not_a_state(path, "it is a plain pickle, such as a network .pkl (pass network "
                                 "pickles as --gen or --teacher)")
    if head[:2] != b"PK":
        raise _not_a_state(path, "it is neither a torch.save file nor a pickle")
    if not zipfile.is_zipfile(path):  # cut short: a zip's directory is at its very end
        raise _not_a_state(path, "it is a truncated or damaged torch.save file (its zip "
                                 "directory is missing)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for foreign or truncated files
        raise _not_a_state(path, _why_torch_refused(err)) from err


def load_state(path, map_location="cpu"):
    """Load a state file written by save_state (a run folder means its refine-state.pt).

    Raises FileNotFoundError, or StateFileError (a ValueError) with one line for a file that is
    not a state, one from a newer version, or one that lacks any of REQUIRED_KEYS.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, STATE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no refiner state file at {path}")
    state = _load_data_only(path, map_location)
    if not isinstance(state, dict):
        raise StateFileError(f"{path} is not a gan_refine {STATE_FILE}: it holds a "
                             f"{type(state).__name__}, not a state dict")
    fmt = state.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise StateFileError(f"{path} is not a gan_refine {STATE_FILE}: it has no state format "
                             "number (a plain torch checkpoint?)")
    if fmt > STATE_FORMAT:
        raise StateFileError(f"{path} was written by a newer gan_refine (state format {fmt}; this "
                             f"version reads format {STATE_FORMAT}); upgrade gan_refine to resume it")
    if fmt != STATE_FORMAT:
        raise StateFileError(f"{path} has state format {fmt}, which this version cannot resume "
                             f"(it reads format {STATE_FORMAT}); start a new run")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise StateFileError(f"{path} is an incomplete refiner state: it lacks {', '.join(missing)}; "
                             "it was edited or written by other code, so resume from another state "
                             "or start a new run")
    return state


def _quoted_after(text, label):
    line = next((ln for ln in text.splitlines() if ln.strip().startswith(label)), "")
    return re.findall(r'"([^"]+)"', line)


def _first(items, n=3):
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _counted(n, word, plural):
    return f"{n} {word if n == 1 else plural}"


_SIZE_RE = re.compile(r"size mismatch for ([^:\s]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\)"
                      r" from checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)")


def describe_state_mismatch(err, part="G", target="this generator",
                            advice="resume with the same --gen and --teacher as the run that wrote it"):
    """One line for the error of `module.load_state_dict(state[part])`.

    torch's message spans one line per kind of problem and lists every key; this counts the
    size mismatches, missing and unexpected keys and names the first few of each.
    """
    text = str(err)
    sizes = [f"{k}: saved [{a.replace(' ', '')}] vs now [{b.replace(' ', '')}]"
             for k, a, b in _SIZE_RE.findall(text)]
    missing = _quoted_after(text, "Missing key(s)")
    unexpected = _quoted_after(text, "Unexpected key(s)")
    parts = []
    if sizes:
        parts.append(f"{_counted(len(sizes), 'size mismatch', 'size mismatches')} ({_first(sizes)})")
    if missing:
        parts.append(f"{_counted(len(missing), 'missing key', 'missing keys')} ({_first(missing)})")
    if unexpected:
        parts.append(f"{_counted(len(unexpected), 'unexpected key', 'unexpected keys')} "
                     f"({_first(unexpected)})")
    detail = ", ".join(parts) or " ".join(text.split())[:200] or type(err).__name__
    return f"the state's {part} does not fit {target}: {detail}" + (f"; {advice}" if advice else "")
