"""Network pickle I/O: layouts, clear errors on foreign files, atomic and clean exports."""

import io
import os
import pickle
import pickletools
import struct

import pytest
import torch

import gan_refine
from gan_refine import pickles
from gan_refine.pickles import NetworkPickleError, load_network_pkl, save_network_pkl


class _Plain(torch.nn.Module):
    """Not persistent: a stream holding it names this test module, which upstream can't import."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)


def _globals_independent(stream):
    """(module, name) pairs of a protocol-2+ stream by simulating the pickle stack's string pushes.

    Written separately from gan_refine.pickles.stream_globals, as its reference.
    """
    out, memo, strings = set(), {}, []
    for op, arg, _ in pickletools.genops(stream):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE"):
            strings.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
            continue
        elif op.name in ("BINGET", "LONG_BINGET"):
            strings.append(memo.get(arg))
        elif op.name == "STACK_GLOBAL":
            out.add((strings[-2], strings[-1]))
            strings.append(None)
        elif op.name == "GLOBAL":
            out.add(tuple(arg.split(" ", 1)))
        else:
            strings.append(None)
    return out


def _stylegan_like():
    from dnnlib import EasyDict
    return {"training_set_kwargs": EasyDict(resolution=8), "G": torch.nn.Identity(),
            "D": torch.nn.Identity(), "G_ema": torch.nn.Identity(), "augment_pipe": None}


def test_save_load_round_trip_atomic(tmp_path):
    data = _stylegan_like()
    path = tmp_path / "out" / "net.pkl"
    save_network_pkl(data, path, metadata={"version": gan_refine.__version__})
    assert sorted(os.listdir(path.parent)) == ["net.pkl"]  # no temp files left behind
    loaded = load_network_pkl(str(path))
    assert list(loaded) == list(data) + ["gan_refine"]
    assert loaded["training_set_kwargs"].resolution == 8
    assert type(loaded["training_set_kwargs"]).__module__ == "dnnlib.util"
    names = _globals_independent(path.read_bytes())
    assert ("dnnlib.util", "EasyDict") in names
    assert not any("gan_refine" in m for m, _ in names)
    assert names == pickles.stream_globals(path.read_bytes())


def test_save_refuses_foreign_globals_and_keeps_old_file(tmp_path):
    path = tmp_path / "net.pkl"
    save_network_pkl(_stylegan_like(), path)
    before = path.read_bytes()
    bad = dict(_stylegan_like(), G=_Plain())
    with pytest.raises(NetworkPickleError, match="test_pickles._Plain"):
        save_network_pkl(bad, path)
    assert path.read_bytes() == before


def test_save_failure_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "net.pkl"
    save_network_pkl(_stylegan_like(), path)
    before = path.read_bytes()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="untouched"):
        save_network_pkl(_stylegan_like(), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["net.pkl"]


def _raw_pickle(global_module, global_name):
    # A protocol-2 stream: GLOBAL 'module name', EMPTY_TUPLE, REDUCE, STOP.
    return (b"\x80\x02c" + global_module.encode() + b"\n" + global_name.encode() + b"\n" + b")R.")


@pytest.mark.parametrize("content, match", [
    (_raw_pickle("dnnlib.tflib.network", "Network"), "TensorFlow-era"),
    (b"PK\x03\x04rest-of-a-zip", "zip archive"),
    (b"hello world, not a pickle", "not a pickle file"),
    (pickle.dumps({"G": 1})[:-5], "truncated or corrupt"),
    (pickle.dumps([1, 2, 3]), "not a StyleGAN/EDM network pickle"),
    (pickle.dumps({"state_dict": {}}), "keys state_dict"),
    (pickle.dumps((1, 2, 3)), "3-tuple"),
    (_raw_pickle("some_private_repo.nets", "Thing"), "not available here"),
])
def test_clear_errors_for_foreign_files(tmp_path, content, match):
    path = tmp_path / "x.pkl"
    path.write_bytes(content)
    with pytest.raises(NetworkPickleError, match=match):
        load_network_pkl(str(path))
    assert path.read_bytes() == content  # never modified


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such network pickle"):
        load_network_pkl(str(tmp_path / "nope.pkl"))
    with pytest.raises(NetworkPickleError, match="folder"):
        load_network_pkl(str(tmp_path))


def test_numpy_core_names_from_either_numpy_major(tmp_path):
    import numpy as np
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    stream = pickle.dumps({"ema": torch.nn.Identity(), "arr": arr}, protocol=2)
    # Rewrite the module name to the other numpy spelling (same length keeps opcodes valid? no:
    # protocol 2 uses text GLOBAL lines, so a different length is fine).
    present = "numpy._core.multiarray" if b"numpy._core.multiarray" in stream else "numpy.core.multiarray"
    other = "numpy.core.multiarray" if present == "numpy._core.multiarray" else "numpy._core.multiarray"
    path = tmp_path / "np.pkl"
    path.write_bytes(stream.replace(present.encode() + b"\n", other.encode() + b"\n"))
    assert other.encode() in path.read_bytes()
    data = load_network_pkl(str(path))
    np.testing.assert_array_equal(data["arr"], arr)


def test_file_url(tmp_path):
    path = tmp_path / "net.pkl"
    save_network_pkl(_stylegan_like(), path)
    data = load_network_pkl(path.as_uri())
    assert "G_ema" in data


def test_describe_mentions_attributes(tmp_path):
    g = torch.nn.Linear(3, 3)
    g.z_dim, g.img_resolution = 3, 8
    text = pickles.describe({"G": g, "D": torch.nn.Identity(), "G_ema": g})
    assert "z_dim=3" in text and "img_resolution=8" in text and "params=12" in text


# ----------------------------------------------------------------------------
# Code embedded in a network pickle that raises while loading.

class _Carrier:
    """Pickles as persistence's rebuild call with a meta dict of our choosing."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        from torch_utils import persistence
        return persistence._reconstruct_persistent_obj, (self.meta,)


def _pickle_with_source_tail(path, tail, tag):
    from gan_refine.nets import edm
    meta = dict(edm.Linear(2, 2).__reduce__()[1][0])
    meta["module_src"] += f"\n# {tag}\n{tail}\n"  # a new text each time: executed afresh
    path.write_bytes(pickle.dumps({"ema": _Carrier(meta)}))
    return path


def test_embedded_code_error_is_a_pickle_code_error_with_its_cause(tmp_path):
    path = _pickle_with_source_tail(tmp_path / "z.pkl", "1 / 0", "zero")
    with pytest.raises(pickles.PickleCodeError) as info:
        load_network_pkl(str(path))
    err = info.value
    assert isinstance(err, NetworkPickleError) and isinstance(err, ValueError)
    assert isinstance(err.__cause__, ZeroDivisionError)  # kept for --debug style reporting
    msg = str(err)
    assert msg.startswith(f"{path}: the code stored inside this network pickle failed")
    assert "class Linear" in msg and "re-export it with the tool that made it" in msg


def test_embedded_import_error_says_what_to_install(tmp_path):
    path = _pickle_with_source_tail(tmp_path / "i.pkl", "import some_missing_dep_xyz", "import")
    with pytest.raises(pickles.PickleCodeError, match="install the package that provides "
                                                       "'some_missing_dep_xyz'"):
        load_network_pkl(str(path))


def test_stream_errors_are_not_blamed_on_embedded_code(tmp_path):
    # A missing module named by the stream itself (not by stored source) keeps its own message.
    path = tmp_path / "m.pkl"
    path.write_bytes(_raw_pickle("private_repo_xyz.training.networks", "Generator"))
    with pytest.raises(NetworkPickleError) as info:
        load_network_pkl(str(path))
    assert type(info.value) is NetworkPickleError and "not available here" in str(info.value)


def test_failed_load_leaves_no_module_behind(tmp_path):
    import sys
    before = {m for m in sys.modules if m.startswith("_imported_module_")}
    path = _pickle_with_source_tail(tmp_path / "late.pkl", "raise OSError('late')", "late")
    with pytest.raises(pickles.PickleCodeError, match="OSError: late"):
        load_network_pkl(str(path))
    assert {m for m in sys.modules if m.startswith("_imported_module_")} == before
