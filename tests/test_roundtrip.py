"""The round-trip contract, over every fixture family: build -> save -> load -> forward -> save ->
reload in a process where gan_refine cannot be imported (only our compat folder on the path, as
for a user with a stock upstream checkout) -> identical outputs, clean streams, verbatim sources.
"""

import inspect
import io
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

import gan_refine
from gan_refine import compat, nets
from gan_refine.pickles import ALLOWED_MODULE_PREFIXES, load_network_pkl, save_network_pkl, stream_globals

CASES = {
    "stylegan2": lambda: nets.stylegan2_pkl_dict(res=8, c_dim=0, channels=3),
    "stylegan2-cond": lambda: nets.stylegan2_pkl_dict(res=8, c_dim=4, channels=1),
    "stylegan3": lambda: nets.stylegan3_pkl_dict(res=8, c_dim=0, channels=3),
    "edm": lambda: nets.edm_pkl_dict(kind="EDMPrecond", res=8, channels=3, label_dim=3),
    "edm-vp": lambda: nets.edm_pkl_dict(kind="VPPrecond", res=8, channels=1, label_dim=0),
    "edm-ve": lambda: nets.edm_pkl_dict(kind="VEPrecond", res=8, channels=1, label_dim=0),
    "edm-iddpm": lambda: nets.edm_pkl_dict(kind="iDDPMPrecond", res=8, channels=1, label_dim=0),
}

# Run in the loading process (ours and the gan_refine-free one): fixed inputs, deterministic modes.
FORWARD_SRC = textwrap.dedent('''
    import torch
    def run_forward(data):
        torch.manual_seed(123)
        outs = {}
        if "G_ema" in data:
            for key in ("G", "G_ema"):
                G = data[key]
                z = torch.randn(2, G.z_dim)
                c = torch.nn.functional.one_hot(torch.tensor([0, 1]) % max(G.c_dim, 1), max(G.c_dim, 1)).float()
                c = c[:, :G.c_dim]
                try:
                    outs[key] = G(z, c, truncation_psi=1, noise_mode="const")
                except TypeError:
                    outs[key] = G(z, c, truncation_psi=1)
        else:
            net = data["ema"]
            x = torch.randn(2, net.img_channels, net.img_resolution, net.img_resolution)
            sigma = torch.tensor([0.3, 5.0])
            labels = None
            if net.label_dim:
                labels = torch.eye(net.label_dim)[[0, 1]]
            outs["ema"] = net(x, sigma, labels)
        return outs
    ''')
_ns = {}
exec(FORWARD_SRC, _ns)
run_forward = _ns["run_forward"]


def _module_srcs(stream):
    """The module_src of every persistent object in a stream, via an independent spy unpickler."""
    found = []

    class Spy(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
                return lambda meta: found.append(meta["module_src"])
            return super().find_class(module, name)
    Spy(io.BytesIO(stream)).load()
    return found


def _nets_sources():
    import gan_refine.nets.augment
    import gan_refine.nets.edm
    import gan_refine.nets.stylegan2
    import gan_refine.nets.stylegan3
    mods = (gan_refine.nets.stylegan2, gan_refine.nets.stylegan3, gan_refine.nets.edm, gan_refine.nets.augment)
    return {open(inspect.getsourcefile(m), encoding="utf-8").read() for m in mods}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip(case, tmp_path):
    torch.manual_seed(0)
    data = CASES[case]()
    first = tmp_path / "first.pkl"
    save_network_pkl(data, first)
    loaded = load_network_pkl(str(first))
    assert list(loaded) == list(data)
    expected = run_forward(loaded)
    direct = run_forward(data)
    for k in expected:
        torch.testing.assert_close(expected[k], direct[k], rtol=0, atol=0)

    second = tmp_path / "second.pkl"
    save_network_pkl(loaded, second)
    stream1, stream2 = first.read_bytes(), second.read_bytes()
    for m, n in stream_globals(stream2):
        assert any(m == p or m.startswith(p + ".") for p in ALLOWED_MODULE_PREFIXES), (m, n)
        assert "gan_refine" not in m
    srcs1, srcs2 = _module_srcs(stream1), _module_srcs(stream2)
    assert srcs1 and srcs1 == srcs2
    assert set(srcs2) <= _nets_sources()  # byte-identical to the files that defined the classes

    # A fresh process that cannot import gan_refine; our compat folder stands in for upstream's.
    blocker = tmp_path / "blocker" / "gan_refine"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no gan_refine here')\n")
    out = tmp_path / "out.pt"
    code = FORWARD_SRC + textwrap.dedent(f'''
        import pickle, sys
        torch.set_num_threads({torch.get_num_threads()})  # same reduction order as the parent: bitwise equality
        try:
            import gan_refine
            sys.exit("gan_refine must not be importable here")
        except ImportError:
            pass
        with open({str(second)!r}, "rb") as f:
            data = pickle.load(f)
        torch.save(run_forward(data), {str(out)!r})
        ''')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker.parent), compat.COMPAT_DIR]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)
    theirs = torch.load(out, weights_only=False)
    assert set(theirs) == set(expected)
    for k in expected:
        torch.testing.assert_close(theirs[k], expected[k], rtol=0, atol=0)


def test_adapters_agree_with_direct_calls():
    from gan_refine.adapters import as_generator, as_teacher
    torch.manual_seed(0)
    data = nets.stylegan2_pkl_dict(res=8, c_dim=3, channels=3)
    gen = as_generator(data, noise_mode="const")
    z = torch.randn(2, gen.z_dim)
    c = torch.eye(3)[[0, 2]]
    torch.testing.assert_close(gen(z, c), data["G_ema"](z, c, truncation_psi=1, noise_mode="const"))
    edm = nets.edm_pkl_dict(kind="EDMPrecond", res=8, channels=3, label_dim=3)
    teacher = as_teacher(edm)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(teacher(x, 0.7, c), edm["ema"](x, torch.full([2], 0.7), c).float())
