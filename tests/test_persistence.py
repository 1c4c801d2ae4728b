"""torch_utils.persistence: format-6 streams, verbatim source, hooks, and loading without gan_refine."""

import os
import pickle
import pickletools
import subprocess
import sys
import textwrap

import pytest
import torch

import gan_refine
from gan_refine import compat

NET_SRC = textwrap.dedent('''\
    # A persistent network defined in its own file, the way upstream networks are.
    import torch
    from torch_utils import persistence

    @persistence.persistent_class
    class Affine(torch.nn.Module):
        def __init__(self, dim, scale=1.0, tags=None):
            super().__init__()
            self.dim = dim
            self.weight = torch.nn.Parameter(torch.randn(dim, dim) * scale)
            self.register_buffer("offset", torch.arange(dim, dtype=torch.float32))

        def forward(self, x):
            return x @ self.weight + self.offset

    @persistence.persistent_class
    class Wrapper(torch.nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.inner = Affine(dim, scale=0.5, tags=["a", "b"])
            self.plain = torch.nn.Linear(dim, dim)

        def forward(self, x):
            return self.plain(self.inner(x))
    ''')


@pytest.fixture
def netmod(tmp_path, monkeypatch):
    """Import NET_SRC as a real module from a file (unique name per test)."""
    name = f"persist_net_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(NET_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    mod = importlib.import_module(name)
    yield mod
    sys.modules.pop(name, None)


def _meta_dicts(stream):
    """Every dict passed to _reconstruct_persistent_obj, recovered with an independent unpickler."""
    found = []

    class Spy(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
                def capture(meta):
                    found.append(meta)
                    return None
                return capture
            return super().find_class(module, name)
    Spy(__import__("io").BytesIO(stream)).load()
    return found


def test_stream_layout_and_verbatim_source(netmod):
    torch.manual_seed(0)
    net = netmod.Wrapper(4)
    stream = pickle.dumps(net)
    globals_ = {(a.split(" ")[0]) for op, a, _ in pickletools.genops(stream) if op.name == "GLOBAL"}
    assert "gan_refine" not in stream.decode("latin1").split("module_src")[0]
    metas = _meta_dicts(stream)
    assert metas, "no persistent object in the stream"
    for meta in metas:
        assert set(meta) == {"type", "version", "module_src", "class_name", "state"}
        assert meta["type"] == "class" and meta["version"] == 6
        assert meta["module_src"] == NET_SRC  # byte-identical to the file
    assert {m["class_name"] for m in metas} == {"Wrapper", "Affine"}
    assert not globals_  # protocol 4 uses STACK_GLOBAL only


def test_round_trip_and_init_kwargs(netmod):
    torch.manual_seed(0)
    net = netmod.Wrapper(3)
    x = torch.randn(2, 3)
    clone = pickle.loads(pickle.dumps(net))
    # In the defining process the stored source maps back to the already-imported module.
    assert type(clone) is type(net)
    torch.testing.assert_close(clone(x), net(x), rtol=0, atol=0)
    assert clone.inner.init_kwargs == {"scale": 0.5, "tags": ["a", "b"]}
    assert clone.inner.init_kwargs.scale == 0.5  # EasyDict
    assert clone.init_args == (3,)
    # Re-saving a loaded object keeps the embedded source verbatim.
    metas = _meta_dicts(pickle.dumps(clone))
    assert all(m["module_src"] == NET_SRC for m in metas)
    from torch_utils import persistence
    assert persistence.is_persistent(clone) and persistence.is_persistent(type(clone))
    assert not persistence.is_persistent(torch.nn.Linear(1, 1))


def test_unknown_source_executes_once_in_fresh_module(netmod):
    from torch_utils import persistence
    net = netmod.Affine(2)
    meta = net.__reduce__()[1][0]
    meta["module_src"] = NET_SRC + "\n# a different text, so a new module\n"
    a = persistence._reconstruct_persistent_obj(dict(meta))
    b = persistence._reconstruct_persistent_obj(dict(meta))
    assert type(a) is type(b)
    assert type(a).__module__.startswith("_imported_module_")
    assert sys.modules[type(a).__module__].__dict__["Affine"] is not None
    x = torch.randn(4, 2)
    torch.testing.assert_close(a(x), net(x), rtol=0, atol=0)
    # Its re-pickled stream carries the new text verbatim.
    assert all(m["module_src"] == meta["module_src"] for m in _meta_dicts(pickle.dumps(a)))


def test_import_hook_and_version_check(netmod):
    from torch_utils import persistence
    net = netmod.Affine(2)
    stream = pickle.dumps(net)
    seen = []

    def hook(meta):
        seen.append(meta.class_name)
        meta.module_src = meta.module_src.replace("x @ self.weight + self.offset",
                                                  "x @ self.weight + self.offset + 100")
        return meta
    persistence.import_hook(hook)
    try:
        patched = pickle.loads(stream)
    finally:
        persistence._import_hooks.remove(hook)
    assert seen == ["Affine"]
    x = torch.randn(1, 2)
    torch.testing.assert_close(patched(x), net(x) + 100)

    def bump(meta):
        meta.version = 5
        return meta
    persistence.import_hook(bump)
    try:
        with pytest.raises(RuntimeError, match="version 5"):
            pickle.loads(stream)
    finally:
        persistence._import_hooks.remove(bump)


def test_unpicklable_constructor_argument_fails_early(netmod):
    with pytest.raises(Exception):
        netmod.Affine(2, tags=[lambda: 0])


def test_old_pickle_state_without_new_hook_dicts_loads(netmod):
    # Pickles written by older torch versions lack newer nn.Module hook dicts; setstate fills them.
    net = netmod.Affine(2)
    reduced = net.__reduce__()
    meta = reduced[1][0]
    for k in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks"):
        meta["state"].pop(k, None)
    from torch_utils import persistence
    obj = persistence._reconstruct_persistent_obj(meta)
    x = torch.randn(3, 2)
    torch.testing.assert_close(obj(x), net(x))


def _compat_only_env(tmp_path):
    """PYTHONPATH with only our compat folder, and a gan_refine that refuses to import."""
    blocker = tmp_path / "blocker"
    (blocker / "gan_refine").mkdir(parents=True)
    (blocker / "gan_refine" / "__init__.py").write_text("raise ImportError('gan_refine is not installed here')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), compat.COMPAT_DIR])
    return env


def test_loads_with_compat_on_path_without_gan_refine(netmod, tmp_path):
    torch.manual_seed(1)
    net = netmod.Wrapper(5)
    x = torch.randn(3, 5)
    pkl = tmp_path / "net.pkl"
    pkl.write_bytes(pickle.dumps({"G": net, "x": x}))
    out = tmp_path / "out.pt"
    code = textwrap.dedent(f'''
        import pickle, sys, torch
        try:
            import gan_refine
        except ImportError:
            pass
        else:
            sys.exit("gan_refine should not be importable")
        import torch_utils.persistence, dnnlib
        with open({str(pkl)!r}, "rb") as f:
            data = pickle.load(f)
        y = data["G"](data["x"])
        resaved = pickle.dumps(data)
        torch.save({{"y": y, "stream": resaved}}, {str(out)!r})
        ''')
    subprocess.run([sys.executable, "-c", code], check=True, env=_compat_only_env(tmp_path), cwd=tmp_path)
    result = torch.load(out, weights_only=False)
    torch.testing.assert_close(result["y"], net(x), rtol=0, atol=0)
    assert all(m["module_src"] == NET_SRC for m in _meta_dicts(result["stream"]))


def test_users_own_torch_utils_wins(tmp_path):
    own = tmp_path / "own"
    (own / "torch_utils").mkdir(parents=True)
    (own / "torch_utils" / "__init__.py").write_text("MARK = 'users'\n")
    (own / "dnnlib").mkdir()
    (own / "dnnlib" / "__init__.py").write_text("MARK = 'users'\n")
    code = ("import gan_refine, torch_utils, dnnlib; from gan_refine import compat;"
            "print(torch_utils.MARK, dnnlib.MARK, compat.provider('torch_utils') != 'gan_refine')")
    env = dict(os.environ, PYTHONPATH=str(own))
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.stdout.split() == ["users", "users", "True"]


def test_ours_used_when_user_has_none(tmp_path):
    code = "import gan_refine, torch_utils.persistence as p; from gan_refine import compat; print(compat.provider('torch_utils'))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "gan_refine"
