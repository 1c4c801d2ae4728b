"""Bad inputs and faults: each must end in one clear line, never a traceback or unsafe advice.

Every case builds its bad input under tmp_path and returns a call that must raise. The common
checks: the expected exception type, one line, the file named, the case's own words, no
'Traceback', no mention of weights_only (torch's advice to load with weights_only=False runs
the file's code), and for files we must not touch, the bytes unchanged.
"""

import errno
import hashlib
import io
import os
import pickle
import re
import uuid
import zipfile
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import gan_refine  # noqa: F401  (installs the dnnlib / torch_utils aliases)
from gan_refine import pickles, pretrained, snapshot
from gan_refine.compat.dnnlib import util as dl
from gan_refine.pickles import NetworkPickleError, PickleCodeError, load_network_pkl
from gan_refine.snapshot import OutputWriteError, StateFileError


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path, monkeypatch):
    # Verified-hash records go to a throwaway cache, not the user's ~/.cache/dnnlib.
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "dnnlib-cache"))


# ----------------------------------------------------------------------------
# Builders of bad files.

class _Carrier:
    """Pickles as persistence's rebuild call with a meta dict we wrote ourselves."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        from torch_utils import persistence
        return persistence._reconstruct_persistent_obj, (self.meta,)


def _network_meta():
    from gan_refine.nets import edm
    return dict(edm.Linear(2, 2).__reduce__()[1][0])


def hostile_pkl(path, append="", class_name=None, **meta_changes):
    """A network pickle whose stored module source (a real one of ours) ends with `append`.

    Each call's source is unique, so persistence executes it afresh.
    """
    meta = _network_meta()
    meta["module_src"] += f"\n# case {uuid.uuid4().hex}\n{append}\n"
    if class_name:
        meta["class_name"] = class_name
    meta.update(meta_changes)
    path.write_bytes(pickle.dumps({"ema": _Carrier(meta), "loss_fn": None}))
    return path


def raw_pickle(module, name):
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)R."


def good_state():
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters())
    return {"config": {"lr_gen": 1e-5}, "step": 3, "nimg": 96, "G": net.state_dict(),
            "G_ema": net.state_dict(), "fake_score": net.state_dict(), "opt_G": opt.state_dict(),
            "opt_fake": opt.state_dict(), "rng": {"global": snapshot.capture_global_rng()}}


def torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def fake_table(monkeypatch, **entries):
    """Replace the model table with `entries` (name -> partial entry) for one test."""
    base = dict(sha256=None, family="edm", role="teacher", resolution=8, channels=3, label_dim=0,
                conditional=False, dataset="toy", notes="a test entry")
    table = {n: dict(base, **e) for n, e in entries.items()}
    monkeypatch.setattr(pretrained, "_models", lambda: table)


def fail_on_fd_of(monkeypatch, fragment, code, call="write"):
    """Make os.<call> raise OSError(code) for file descriptors open on a path containing
    `fragment`; everything else (pytest's own output too) is untouched."""
    real = getattr(os, call)

    def faulty(fd, *args):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if fragment in target:
            raise OSError(code, os.strerror(code))
        return real(fd, *args)
    monkeypatch.setattr(os, call, faulty)


# ----------------------------------------------------------------------------
# The table.

@dataclass
class Case:
    id: str
    make: Callable  # (tmp_path, monkeypatch) -> (call, path the message must name or None)
    exc: type
    words: tuple
    unchanged: bool = True  # the named file's bytes must not change


def _load_pkl(content):
    def make(tmp, mp):
        path = tmp / "net.pkl"
        data = content(tmp) if callable(content) else content
        path.write_bytes(data)
        return (lambda: load_network_pkl(str(path))), str(path)
    return make


def _load_hostile(**kw):
    def make(tmp, mp):
        path = hostile_pkl(tmp / "hostile.pkl", **kw)
        return (lambda: load_network_pkl(str(path))), str(path)
    return make


def _load_state(content):
    def make(tmp, mp):
        path = tmp / "refine-state.pt"
        data = content(tmp) if callable(content) else content
        path.write_bytes(data)
        return (lambda: snapshot.load_state(str(path))), str(path)
    return make


def _folder_as_pkl(tmp, mp):
    return (lambda: load_network_pkl(str(tmp))), str(tmp)


def _truncated_network(tmp):
    hostile_pkl(tmp / "whole.pkl")
    return (tmp / "whole.pkl").read_bytes()[:-40]


def _wrong_sha_local(tmp, mp):
    path = tmp / "local.pkl"
    pickles.save_network_pkl({"ema": torch.nn.Identity()}, path)
    fake_table(mp, toy=dict(url=str(path), sha256="0" * 64))
    return (lambda: load_network_pkl("toy")), str(path)


def _wrong_sha_by_path(tmp, mp):
    path = tmp / "local.pkl"
    pickles.save_network_pkl({"ema": torch.nn.Identity()}, path)
    fake_table(mp, toy=dict(url=path.as_uri(), sha256="1" * 64))
    return (lambda: load_network_pkl(str(path))), str(path)


def _wrong_sha_shipped(tmp, mp):
    entry = pretrained.lookup("digits-edm")
    fake_table(mp, **{"digits-edm": dict(entry, sha256="2" * 64)})
    return (lambda: load_network_pkl("digits-edm")), pretrained.package_path(entry["url"])


def _state_of_network(tmp):
    pickles.save_network_pkl({"ema": torch.nn.Identity()}, tmp / "n.pkl")
    return (tmp / "n.pkl").read_bytes()


def _state_without(*keys):
    return lambda tmp: torch_bytes({k: v for k, v in dict(good_state(), format=1).items()
                                    if k not in keys})


def _damaged_inside(tmp):
    """A state whose zip directory is intact but whose pickled record is garbage."""
    src, out = io.BytesIO(torch_bytes(dict(good_state(), format=1))), io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, b"\x80\x02garbage" if info.filename.endswith("data.pkl") else data)
    return out.getvalue()


def _write_with_fault(code, call="write", size=3_000_000):
    def make(tmp, mp):
        path = tmp / "network-snapshot-000010.pkl"
        path.write_bytes(b"previous snapshot")
        fail_on_fd_of(mp, ".tmp-", code, call)
        return (lambda: snapshot.atomic_write_bytes(path, os.urandom(size))), str(path)
    return make


def _makedirs_fault(code):
    def make(tmp, mp):
        path = tmp / "out" / "state.pt"

        def refuse(*a, **k):
            raise OSError(code, os.strerror(code))
        mp.setattr(os, "makedirs", refuse)
        return (lambda: snapshot.save_state(path, good_state())), str(path)
    return make


def _read_only_at_open(tmp, mp):
    """A read-only mount refuses the temp file's creation itself."""
    path = tmp / "grid-000010.png"
    real_open = os.open

    def refuse(name, *args, **kw):
        if ".tmp-" in os.fspath(name):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(name, *args, **kw)
    mp.setattr(os, "open", refuse)
    return (lambda: snapshot.atomic_write_bytes(path, b"png")), str(path)


def _outdir_under_file(tmp, mp):
    (tmp / "afile").write_text("x")
    path = tmp / "afile" / "run" / "refine-state.pt"
    return (lambda: snapshot.save_state(path, good_state())), str(path)


def _append_full_disk(tmp, mp):
    path = tmp / "stats.jsonl"
    path.write_text('{"step": 1}\n')
    fail_on_fd_of(mp, "stats.jsonl", errno.ENOSPC)
    return (lambda: snapshot.append_jsonl(path, {"step": 2})), str(path)


def _jsonl_corrupt_middle(tmp, mp):
    path = tmp / "metrics.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2, "b\n{"a": 3}\n')
    return (lambda: snapshot.read_jsonl(path)), str(path)


def _jsonl_binary_middle(tmp, mp):
    path = tmp / "metrics.jsonl"
    path.write_bytes(b'{"a": 1}\n\xff\xfe\x00garbage\n{"a": 3}\n')
    return (lambda: snapshot.read_jsonl(path)), str(path)


def _jsonl_missing(tmp, mp):
    path = tmp / "nope.jsonl"
    return (lambda: snapshot.read_jsonl(path)), str(path)


def _no_space_for_run(tmp, mp):
    return (lambda: snapshot.check_free_space(tmp / "new-run", 10 ** 18, "one snapshot and one state")), \
        str(tmp / "new-run")


CASES = [
    # Network pickles that are not ones.
    Case("pkl-zero-bytes", _load_pkl(b""), NetworkPickleError, ("empty",)),
    Case("pkl-text-file", _load_pkl(b"G = Generator()\n"), NetworkPickleError, ("not a pickle file",)),
    Case("pkl-torch-save-zip", _load_pkl(lambda t: torch_bytes({"w": torch.ones(2)})),
         NetworkPickleError, ("zip archive",)),
    Case("pkl-is-a-state-file", _load_pkl(lambda t: torch_bytes(dict(good_state(), format=1))),
         NetworkPickleError, ("zip archive",)),
    Case("pkl-list", _load_pkl(pickle.dumps([1, 2, 3])), NetworkPickleError, ("holds list",)),
    Case("pkl-foreign-dict", _load_pkl(pickle.dumps({"model": 1})), NetworkPickleError, ("keys model",)),
    Case("pkl-truncated-plain", _load_pkl(pickle.dumps({"G": list(range(99))})[:-7]),
         NetworkPickleError, ("truncated or corrupt",)),
    Case("pkl-truncated-network", _load_pkl(_truncated_network),
         NetworkPickleError, ("truncated or corrupt",)),
    Case("pkl-garbage-after-header", _load_pkl(b"\x80\x04\x95garbage-garbage"), NetworkPickleError,
         ("truncated or corrupt",)),
    Case("pkl-tensorflow-era", _load_pkl(raw_pickle("dnnlib.tflib.network", "Network")),
         NetworkPickleError, ("TensorFlow-era",)),
    Case("pkl-unknown-module", _load_pkl(raw_pickle("private_repo_xyz.nets", "G")),
         NetworkPickleError, ("not available here",)),
    Case("pkl-bad-callable-args", _load_pkl(raw_pickle("builtins", "divmod")), NetworkPickleError,
         ("truncated or corrupt", "TypeError")),
    Case("pkl-folder", _folder_as_pkl, NetworkPickleError, ("folder",)),
    # Hostile or broken code embedded in a network pickle.
    Case("code-zero-division", _load_hostile(append="1 / 0"), PickleCodeError,
         ("ZeroDivisionError", "pickle's own code", "re-export", "line ")),
    Case("code-syntax-error", _load_hostile(append="def broken(:\n    pass"), PickleCodeError,
         ("SyntaxError", "own code")),
    Case("code-name-error", _load_hostile(append="undefined_helper()"), PickleCodeError,
         ("NameError", "undefined_helper")),
    Case("code-import-error", _load_hostile(append="import no_such_package_xyz"), PickleCodeError,
         ("ModuleNotFoundError", "install the package", "no_such_package_xyz")),
    Case("code-runtime-error-multiline", _load_hostile(append="raise RuntimeError('a\\nb\\n\\nc')"),
         PickleCodeError, ("RuntimeError: a b c",)),
    Case("code-key-error", _load_hostile(append="{}['missing']"), PickleCodeError, ("KeyError",)),
    Case("code-system-exit", _load_hostile(append="raise SystemExit(3)"), PickleCodeError,
         ("SystemExit",)),
    Case("code-missing-class", _load_hostile(class_name="NoSuchClass"), PickleCodeError,
         ("NoSuchClass", "own code")),
    Case("code-setstate-raises", _load_hostile(
        append="class Hostile:\n    def __setstate__(self, state):\n        raise ValueError('no state')",
        class_name="Hostile"), PickleCodeError, ("ValueError: no state", "class Hostile")),
    Case("code-future-persistence-version", _load_hostile(version=99), PickleCodeError,
         ("version 99",)),
    # sha256 of table entries: local, file:// and shipped files, not only downloads.
    Case("sha-local-entry", _wrong_sha_local, dl.ChecksumError,
         ("damaged or a different file", "fetch 'toy' again")),
    Case("sha-local-by-path", _wrong_sha_by_path, dl.ChecksumError, ("damaged",)),
    Case("sha-shipped-entry", _wrong_sha_shipped, dl.ChecksumError, ("reinstall gan_refine",)),
    # State files.
    Case("state-is-network-pickle", _load_state(_state_of_network), StateFileError,
         ("plain pickle", "data only")),
    Case("state-holds-objects", _load_state(lambda t: torch_bytes({"G": torch.nn.Linear(1, 1)})),
         StateFileError, ("holds Python objects", "torch.nn.modules.linear.Linear", "data only")),
    Case("state-text-file", _load_state(b"step: 3\n"), StateFileError, ("neither",)),
    Case("state-zero-bytes", _load_state(b""), StateFileError, ("empty",)),
    Case("state-truncated", _load_state(lambda t: torch_bytes(dict(good_state(), format=1))[:-300]),
         StateFileError, ("truncated or damaged", "zip directory is missing")),
    Case("state-not-a-zip-but-pk", _load_state(b"PK\x03\x04not really a zip"), StateFileError,
         ("truncated or damaged",)),
    Case("state-damaged-inside", _load_state(_damaged_inside), StateFileError,
         ("damaged or truncated torch.save file",)),
    Case("state-missing-keys", _load_state(_state_without("G_ema", "rng")), StateFileError,
         ("lacks G_ema, rng",)),
    Case("state-missing-one-key", _load_state(_state_without("G")), StateFileError, ("lacks G;",)),
    Case("state-future-format", _load_state(lambda t: torch_bytes(dict(good_state(), format=7))),
         StateFileError, ("newer gan_refine", "format 7")),
    Case("state-no-format", _load_state(lambda t: torch_bytes(good_state())), StateFileError,
         ("no state format",)),
    Case("state-list", _load_state(lambda t: torch_bytes([1, 2])), StateFileError, ("holds a list",)),
    Case("state-folder-without-state", lambda t, m: ((lambda: snapshot.load_state(t)), str(t)),
         FileNotFoundError, ("no refiner state file",)),
    # Writes that fail: nothing half-written, the previous file untouched.
    Case("write-full-disk", _write_with_fault(errno.ENOSPC), OutputWriteError,
         ("no space left on device", "free in", "3.0 MB to write", "untouched")),
    Case("write-quota-at-fsync", _write_with_fault(errno.EDQUOT, "fsync"), OutputWriteError,
         ("disk quota exceeded", "to write")),
    Case("write-read-only-fs", _write_with_fault(errno.EROFS, "write", 10), OutputWriteError,
         ("read-only",)),
    Case("write-read-only-at-open", _read_only_at_open, OutputWriteError, ("read-only", "--outdir")),
    Case("write-permission", _makedirs_fault(errno.EACCES), OutputWriteError,
         ("permission denied", "--outdir")),
    Case("write-outdir-under-file", _outdir_under_file, OutputWriteError, ("is a file", "--outdir")),
    Case("append-full-disk", _append_full_disk, OutputWriteError,
         ("no space left", "earlier lines are intact")),
    Case("jsonl-corrupt-middle", _jsonl_corrupt_middle, snapshot.JsonlError, ("line 2 of 3",)),
    Case("jsonl-binary-middle", _jsonl_binary_middle, snapshot.JsonlError, ("line 2",)),
    Case("jsonl-missing", _jsonl_missing, FileNotFoundError, ("no such log file",)),
    Case("no-space-for-first-snapshot", _no_space_for_run, OutputWriteError,
         ("not enough free space", "free,", "needed", "one snapshot and one state")),
]


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if "dnnlib-cache" not in p.parts)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_line(case, tmp_path, monkeypatch):
    call, named = case.make(tmp_path, monkeypatch)
    before = open(named, "rb").read() if named and os.path.isfile(named) else None
    files_before = _files(tmp_path)
    with pytest.raises(case.exc) as info:
        call()
    monkeypatch.undo()  # the faulty os.write etc. must not disturb the checks below
    assert type(info.value) is case.exc  # e.g. a corrupt file is no PickleCodeError
    msg = str(info.value)
    assert msg and "\n" not in msg and "\r" not in msg, msg
    assert "Traceback" not in msg and "weights_only" not in msg and "safe_globals" not in msg, msg
    assert not msg.startswith("[Errno"), msg
    if named:
        assert named in msg, msg
    for word in case.words:
        assert word in msg, f"{word!r} not in: {msg}"
    if case.unchanged and before is not None:
        assert open(named, "rb").read() == before
    leftovers = [f for f in _files(tmp_path) if f not in files_before]
    assert not [f for f in leftovers if ".tmp-" in f], leftovers


def test_the_table_is_big_enough():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


# ----------------------------------------------------------------------------
# Faults that need more than one call.

def test_hostile_pickle_fails_the_same_way_every_time(tmp_path):
    # persistence caches a module before running its source; after a failure late in the
    # source, a second load must not reuse the half-run module and quietly succeed.
    path = hostile_pkl(tmp_path / "late.pkl", append="raise ValueError('late failure')")
    for _ in range(2):
        with pytest.raises(PickleCodeError, match="late failure"):
            load_network_pkl(str(path))
    assert not [m for m in pickles._persistence_caches()[1].values()
                if "late failure" in (getattr(m, "__doc__", "") or "")]


def test_good_pickle_loads_after_a_hostile_one(tmp_path):
    with pytest.raises(PickleCodeError):
        load_network_pkl(str(hostile_pkl(tmp_path / "bad.pkl", append="1/0")))
    data = load_network_pkl(str(hostile_pkl(tmp_path / "good.pkl")))
    assert data["ema"].weight.shape == (2, 2)


def test_hostile_code_error_names_its_line(tmp_path):
    path = hostile_pkl(tmp_path / "h.pkl", append="x = 1\ny = 2\nz = x / (y - 2)")
    src_lines = _network_meta()["module_src"].count("\n") + 2 + 3  # source, marker, 3 lines
    with pytest.raises(PickleCodeError) as info:
        load_network_pkl(str(path))
    line = int(re.search(r"line (\d+) of its stored source", str(info.value)).group(1))
    assert abs(line - src_lines) <= 1


def test_full_disk_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "refine-state.pt"
    snapshot.save_state(path, good_state())
    before = path.read_bytes()
    fail_on_fd_of(monkeypatch, ".tmp-", errno.ENOSPC)
    with pytest.raises(OutputWriteError) as info:
        snapshot.save_state(path, dict(good_state(), step=4))
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    free = re.search(r"\(([\d.]+ (?:bytes|kB|MB|GB)) free in ", str(info.value))
    assert free, str(info.value)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["refine-state.pt"]
    assert snapshot.load_state(path)["step"] == 3


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_real_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputWriteError, match="permission denied"):
            snapshot.atomic_write_json(folder / "x.json", {"a": 1})
    finally:
        folder.chmod(0o700)
    assert os.listdir(folder) == []


def test_download_checksum_mismatch_is_one_line(tmp_path):
    # A cached download whose bytes changed is fetched again; a local file is reported.
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    with pytest.raises(dl.ChecksumError) as info:
        dl.open_url(str(path), sha256=hashlib.sha256(b"abd").hexdigest())
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_state_is_never_unpickled_when_it_is_a_plain_pickle(tmp_path, monkeypatch):
    path = tmp_path / "refine-state.pt"
    path.write_bytes(pickle.dumps({"step": 1}))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(StateFileError, match="plain pickle"):
        snapshot.load_state(path)


def test_zip_with_code_is_refused_by_torch_and_reported(tmp_path):
    # A zip that carries a network pickle inside: torch refuses it; the line says why, safely.
    path = tmp_path / "refine-state.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", raw_pickle("os", "system"))
    with pytest.raises(StateFileError) as info:
        snapshot.load_state(path)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def _mismatch_error():
    saved = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    now = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 4))
    sd = saved.state_dict()
    del sd["1.bias"]
    with pytest.raises(RuntimeError) as info:
        now.load_state_dict(sd)
    return info.value


def test_describe_state_mismatch_counts_and_names():
    err = _mismatch_error()
    assert str(err).count("\n") >= 2  # torch's message is several lines
    line = snapshot.describe_state_mismatch(err, "G", "this generator")
    assert "\n" not in line
    assert line.startswith("the state's G does not fit this generator: ")
    assert ("2 size mismatches (0.weight: saved [8,3,3,3] vs now [4,3,3,3], "
            "0.bias: saved [8] vs now [4])") in line
    assert "1 missing key (1.bias)" in line
    assert "2 unexpected keys (2.weight, 2.bias)" in line


def test_describe_state_mismatch_shortens_long_lists_and_foreign_errors():
    now = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(5)])
    with pytest.raises(RuntimeError) as info:
        now.load_state_dict({})
    line = snapshot.describe_state_mismatch(info.value, "fake_score", "this teacher", advice=None)
    assert "10 missing keys (0.weight, 0.bias, 1.weight, ...)" in line and line.endswith(")")
    other = snapshot.describe_state_mismatch(ValueError("groups differ\nin size"), "opt_G", "this optimiser")
    assert other.startswith("the state's opt_G does not fit this optimiser: groups differ in size")
