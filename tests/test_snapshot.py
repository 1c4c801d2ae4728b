"""Atomic writes, their temporary files, JSON-lines logs and state files (gan_refine.snapshot)."""

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import torch

from gan_refine import snapshot
from gan_refine.snapshot import OutputWriteError


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


# ----------------------------------------------------------------------------
# Temporary files.

def test_temp_files_follow_one_pattern(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(os.path.basename(a)), real_replace(a, b)))
    snapshot.atomic_write_bytes(tmp_path / "net.pkl", b"x")
    (name,) = seen
    match = snapshot._TEMP_RE.match(name)
    assert match and match.group("target") == "net.pkl" and int(match.group("pid")) == os.getpid()
    assert os.listdir(tmp_path) == ["net.pkl"]


def test_clean_removes_only_stale_files_of_our_pattern(tmp_path):
    host, me, dead = snapshot._HOST_TAG, os.getpid(), _dead_pid()
    other = "ffffff" if host != "ffffff" else "fffffe"
    names = {
        "dead_writer": f".net.pkl.tmp-{host}-{dead}-0123abcd",
        "live_writer": f".net.pkl.tmp-{host}-{os.getppid()}-0123abcd",
        "this_process": f".state.pt.tmp-{host}-{me}-89abcdef",
        "other_host_fresh": f".net.pkl.tmp-{other}-{dead}-00000000",  # its pid means nothing here
        "other_host_old": f".old.pkl.tmp-{other}-{dead}-11111111",
        "legacy_fresh": ".net.pkl.tmp-deadbeef",
        "legacy_old": ".grid.png.tmp-cafebabe",
        "live_but_abandoned": f".big.pkl.tmp-{host}-{os.getppid()}-22222222",
    }
    for key, name in names.items():
        (tmp_path / name).write_bytes(b"partial")
    for key in ("other_host_old", "legacy_old", "live_but_abandoned"):
        _age(tmp_path / names[key], 7200)
    user_files = ["net.pkl", ".net.pkl.tmp", "notes.tmp-12345678", ".hidden", "x.tmp-abcdef-1-12345678"]
    for name in user_files:
        (tmp_path / name).write_bytes(b"user data")
    (tmp_path / f".dir.tmp-{host}-{dead}-33333333").mkdir()   # a folder is never ours
    removed = snapshot.clean_stale_temp_files(tmp_path, older_than_s=3600)
    gone = {os.path.basename(p) for p in removed}
    assert gone == {names[k] for k in ("dead_writer", "other_host_old", "legacy_old", "live_but_abandoned")}
    assert all(not os.path.exists(p) for p in removed)
    left = set(os.listdir(tmp_path))
    assert set(user_files) <= left
    assert {names[k] for k in ("live_writer", "this_process", "other_host_fresh", "legacy_fresh")} <= left


def test_clean_of_a_missing_folder_is_a_no_op(tmp_path):
    assert snapshot.clean_stale_temp_files(tmp_path / "nope") == []


def test_killed_writer_leaves_a_temp_file_that_clean_removes(tmp_path):
    code = ("import os, sys; from gan_refine import snapshot\n"
            "def stop(fd, data): os._exit(9)  # killed mid-write\n"
            "os.write = stop\n"
            f"snapshot.atomic_write_bytes({str(tmp_path / 'net.pkl')!r}, b'x' * 100)\n")
    subprocess.run([sys.executable, "-c", code], check=False)
    leftovers = [n for n in os.listdir(tmp_path) if snapshot._TEMP_RE.match(n)]
    assert len(leftovers) == 1
    assert snapshot.clean_stale_temp_files(tmp_path) == [str(tmp_path / leftovers[0])]
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name == "nt", reason="POSIX folder fsync")
def test_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b)))
    snapshot.atomic_write_json(tmp_path / "a.json", {"a": 1})
    assert events == ["fsync-file", "replace", "fsync-dir"]


def test_folder_fsync_failure_is_ignored(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")  # what some file systems answer
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    snapshot.atomic_write_text(tmp_path / "a.txt", "ok")
    assert (tmp_path / "a.txt").read_text() == "ok"


def test_ctrl_c_during_a_write_leaves_no_temp_file(tmp_path, monkeypatch):
    (tmp_path / "net.pkl").write_bytes(b"old")

    def interrupted(fd, data):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        snapshot.atomic_write_bytes(tmp_path / "net.pkl", b"new")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["net.pkl"] and (tmp_path / "net.pkl").read_bytes() == b"old"


def test_short_writes_are_completed(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    payload = bytes(range(256)) * 10
    snapshot.atomic_write_bytes(tmp_path / "x.bin", payload)
    monkeypatch.undo()
    assert (tmp_path / "x.bin").read_bytes() == payload


# ----------------------------------------------------------------------------
# Free space.

def test_check_free_space(tmp_path):
    free = snapshot.check_free_space(tmp_path / "not" / "yet", 1, "a snapshot")
    assert isinstance(free, int) and free > 0
    with pytest.raises(OutputWriteError) as info:
        snapshot.check_free_space(tmp_path, free * 10 + 10 ** 9, "one snapshot and one state")
    msg = str(info.value)
    assert f"{snapshot.format_bytes(free * 10 + 10 ** 9)} needed" in msg and str(tmp_path) in msg


@pytest.mark.parametrize("n, text", [(0, "0 bytes"), (999, "999 bytes"), (640_000, "640 kB"),
                                     (12_345_678, "12.3 MB"), (1_250_000_000, "1.25 GB"),
                                     (2 * 10 ** 12, "2.00 TB")])
def test_format_bytes(n, text):
    assert snapshot.format_bytes(n) == text


# ----------------------------------------------------------------------------
# JSON-lines logs.

def test_append_and_read_jsonl(tmp_path):
    path = tmp_path / "stats.jsonl"
    for i in range(3):
        snapshot.append_jsonl(path, {"step": i, "loss": 0.5 * i})
    assert path.read_bytes().count(b"\n") == 3
    assert snapshot.read_jsonl(path) == [{"step": i, "loss": 0.5 * i} for i in range(3)]
    assert snapshot.read_jsonl(tmp_path / "none.jsonl", missing_ok=True) == []
    with pytest.raises(TypeError):
        snapshot.append_jsonl(path, [1, 2])


@pytest.mark.parametrize("tail", [b'{"step": 2, "lo', b'{"step": 2, "loss": {"a": 1}', b'{',
                                  b'\xff\xfe', b'"str"', b'7'])
def test_torn_last_line_is_ignored_then_cut(tmp_path, tail):
    path = tmp_path / "stats.jsonl"
    path.write_bytes(b'{"step": 0}\n{"step": 1}\n' + tail)
    assert snapshot.read_jsonl(path) == [{"step": 0}, {"step": 1}]
    snapshot.append_jsonl(path, {"step": 2})
    assert path.read_bytes() == b'{"step": 0}\n{"step": 1}\n{"step": 2}\n'


def test_complete_unterminated_last_record_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"fid": 3.5}\n{"fid": 3.1}')          # e.g. written by another tool
    assert snapshot.read_jsonl(path) == [{"fid": 3.5}, {"fid": 3.1}]
    snapshot.append_jsonl(path, {"fid": 2.9})
    assert snapshot.read_jsonl(path) == [{"fid": 3.5}, {"fid": 3.1}, {"fid": 2.9}]


def test_torn_only_line_and_long_torn_tail(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"x": "' + b"y" * 200_000)           # no newline at all, longer than a chunk
    assert snapshot.read_jsonl(path) == []
    snapshot.append_jsonl(path, {"x": 1})
    assert path.read_bytes() == b'{"x": 1}\n'


def test_append_failure_keeps_earlier_lines(tmp_path, monkeypatch):
    path = tmp_path / "stats.jsonl"
    snapshot.append_jsonl(path, {"step": 0})
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[:5]))                       # a partial line reaches the disk
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OutputWriteError, match="earlier lines are intact"):
        snapshot.append_jsonl(path, {"step": 1})
    monkeypatch.undo()
    assert path.read_bytes() == b'{"step": 0}\n'


def test_blank_lines_are_skipped_and_middle_damage_is_reported(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n')
    assert snapshot.read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_bytes(b'{"a": 1}\n{"a": 2\n{"a": 3}\n')       # a torn line followed by more: damage
    with pytest.raises(snapshot.JsonlError, match="line 2 of 3"):
        snapshot.read_jsonl(path)


# ----------------------------------------------------------------------------
# State files.

def _state():
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    state = {k: None for k in snapshot.REQUIRED_KEYS}
    state.update(config={"a": 1}, step=5, nimg=160, G=net.state_dict(), G_ema=net.state_dict(),
                 fake_score=net.state_dict(), opt_G=opt.state_dict(), opt_fake=opt.state_dict(),
                 rng={"global": snapshot.capture_global_rng()})
    return state


def test_state_round_trip_from_file_or_folder(tmp_path):
    state = _state()
    snapshot.save_state(tmp_path / snapshot.STATE_FILE, state)
    for where in (tmp_path, tmp_path / snapshot.STATE_FILE):
        loaded = snapshot.load_state(where)
        assert loaded["format"] == snapshot.STATE_FORMAT and loaded["step"] == 5
        torch.testing.assert_close(loaded["G"]["weight"], state["G"]["weight"], rtol=0, atol=0)


def test_required_keys_are_what_a_refiner_saves():
    assert snapshot.REQUIRED_KEYS == ("config", "step", "nimg", "G", "G_ema", "fake_score", "opt_G",
                                      "opt_fake", "rng")


@pytest.mark.parametrize("key", snapshot.REQUIRED_KEYS)
def test_each_missing_key_is_named(tmp_path, key):
    state = _state()
    del state[key]
    snapshot.save_state(tmp_path / "s.pt", state)
    with pytest.raises(snapshot.StateFileError, match=f"it lacks {key};"):
        snapshot.load_state(tmp_path / "s.pt")


def test_output_write_error_is_an_oserror_with_errno(tmp_path):
    err = snapshot._write_error(str(tmp_path / "f"), OSError(30, "Read-only file system"), 10, "kept")
    assert isinstance(err, OSError) and err.errno == 30 and err.filename == str(tmp_path / "f")
    assert str(err) == f"could not write {tmp_path / 'f'}: the file system is read-only; kept; " \
                       "choose a folder you can write to (--outdir)"
    assert json.dumps(str(err))  # plain text
