"""Runs docs/examples/refine_in_stylegan_repo.py on tiny fixtures, as a StyleGAN checkout would.

The checkout is simulated by a folder holding a `legacy.py` that loads pickles the way
stylegan2-ada-pytorch's does for PyTorch-era files (plain pickle.load plus its field checks).
"""

import importlib.util
import os
import pickle
import sys
import textwrap

import pytest
import torch

from gan_refine import nets
from gan_refine.pickles import save_network_pkl

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "docs", "examples",
                       "refine_in_stylegan_repo.py")

LEGACY = textwrap.dedent('''
    import pickle
    import torch

    def load_network_pkl(f, force_fp16=False):
        data = pickle.Unpickler(f).load()
        data.setdefault("training_set_kwargs", None)
        data.setdefault("augment_pipe", None)
        for key in ("G", "D", "G_ema"):
            assert isinstance(data[key], torch.nn.Module), key
        return data
''')


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    (tmp_path / "legacy.py").write_text(LEGACY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "legacy", raising=False)
    yield tmp_path


def _load_example():
    spec = importlib.util.spec_from_file_location("refine_in_stylegan_repo", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_refines_the_users_module_and_exports_a_pickle(checkout, capsys):
    gen_pkl, teacher_pkl = checkout / "G.pkl", checkout / "edm.pkl"
    save_network_pkl(nets.stylegan2_pkl_dict(res=8, seed=0), gen_pkl)
    save_network_pkl(nets.edm_pkl_dict(res=8, seed=1), teacher_pkl)
    out = checkout / "refined.pkl"
    example = _load_example()
    G_refined = example.main(["--network", str(gen_pkl), "--teacher", str(teacher_pkl),
                              "--steps", "3", "--batch", "4", "--lr", "1e-3", "--log-every", "1",
                              "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed.count("step ") == 3 and "wrote" in printed

    import legacy  # the simulated checkout's loader
    with open(gen_pkl, "rb") as f:
        original = legacy.load_network_pkl(f)
    with open(out, "rb") as f:
        refined = legacy.load_network_pkl(f)
    assert type(G_refined) is type(original["G_ema"])
    assert set(refined) == set(original) | {"gan_refine"}
    z = torch.randn([2, original["G_ema"].z_dim], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = original["G_ema"](z, None, noise_mode="const")
        after = refined["G_ema"](z, None, noise_mode="const")
        live = G_refined.cpu()(z, None, noise_mode="const")
    assert (before - after).abs().max() > 1e-6
    torch.testing.assert_close(after, live, rtol=0, atol=0)
    for p, q in zip(original["D"].parameters(), refined["D"].parameters()):
        assert torch.equal(p, q)
    assert refined["gan_refine"]["step"] == 3
    pickle.dumps(refined["gan_refine"])  # plain types only
