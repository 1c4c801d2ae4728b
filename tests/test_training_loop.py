"""The run as a library (gan_refine.training_loop) and the Refiner's guarantees around faults."""

import copy
import json
import os
import pickle

import pytest
import torch
from click.testing import CliRunner

from gan_refine import nets
from gan_refine.cli import main
from gan_refine.config import RefineConfig, RunConfig
from gan_refine.losses import ikl_generator_loss
from gan_refine.pickles import load_network_pkl, save_network_pkl
from gan_refine.refiner import NonFiniteError, Refiner
from gan_refine.snapshot import load_state, save_state
from gan_refine.training_loop import RunError, launch

FAST = ["--batch", "4", "--grid", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def pkls(tmp_path_factory):
    d = tmp_path_factory.mktemp("loop-pkls")
    save_network_pkl(nets.stylegan2_pkl_dict(res=8, seed=0), d / "gen.pkl")
    save_network_pkl(nets.edm_pkl_dict(res=8, seed=3), d / "teacher.pkl")
    return dict(gen=str(d / "gen.pkl"), teacher=str(d / "teacher.pkl"))


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _tensors(obj, prefix=""):
    """Every tensor in a nested state, by path (optimiser states included)."""
    out = {}
    if torch.is_tensor(obj):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
    return out


def test_non_finite_generator_loss_leaves_the_refiner_as_it_was(pkls):
    poison = {"on": False}

    def loss(fake, teacher, x0, sigma, noise, c):
        per_sample, figs = ikl_generator_loss(fake, teacher, x0, sigma, noise, c)
        return (per_sample * float("nan"), figs) if poison["on"] else (per_sample, figs)
    cfg = RefineConfig(batch=4, device="cpu", lr_gen=1e-3, lr_fake=1e-3)
    r = Refiner(load_network_pkl(pkls["gen"]), load_network_pkl(pkls["teacher"]), cfg, generator_loss=loss)
    r.step()
    before = copy.deepcopy(_tensors(r.state_dict()))
    poison["on"] = True
    with pytest.raises(NonFiniteError, match="left as it was before this step"):
        r.step()  # the fake score has stepped by then; it must be undone
    after = _tensors(r.state_dict())
    assert before.keys() == after.keys()
    changed = [k for k in before if "global" not in k and not torch.equal(before[k], after[k])]
    assert changed == []
    # Continuing gives exactly what a refiner that never saw the NaN gives.
    poison["on"] = False
    r.step()
    ref = Refiner(load_network_pkl(pkls["gen"]), load_network_pkl(pkls["teacher"]), cfg, generator_loss=loss)
    ref.step()
    ref.step()
    for (k, a), b in zip(ref.G.state_dict().items(), r.G.state_dict().values()):
        assert torch.equal(a, b), k


def test_nan_weights_in_the_input_are_blamed_on_the_input(pkls, tmp_path):
    data = load_network_pkl(pkls["gen"])
    with torch.no_grad():
        next(data["G_ema"].parameters()).fill_(float("nan"))
    bad = tmp_path / "nan-gen.pkl"
    save_network_pkl(data, bad)
    r = _invoke(["--gen", bad, "--teacher", pkls["teacher"], "--kimg", 0.008,
                                  "--outdir", tmp_path / "runs"] + FAST)
    assert r.exit_code == 1
    err = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and "generator's weights hold NaN/inf" in err[0] and str(bad) in err[0]
    assert "--lr" not in err[0]
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")


class _Marker:
    """Unpickling this writes a file: stands in for a hostile network pickle."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('loaded')",))


def test_resume_never_loads_a_pickle_named_only_in_the_state(pkls, tmp_path):
    r = _invoke(["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--kimg", 0.004,
                                  "--outdir", tmp_path / "runs"] + FAST)
    assert r.exit_code == 0, r.output
    run = os.path.join(tmp_path / "runs", os.listdir(tmp_path / "runs")[0])
    marker = tmp_path / "marker"
    hostile = tmp_path / "hostile.pkl"
    with open(hostile, "wb") as f:
        pickle.dump(_Marker(str(marker)), f)
    state = load_state(run)
    state["run"] = dict(state["run"], gen=str(hostile), gen_name=str(hostile),
                        teacher="https://127.0.0.1:9/evil.pkl", teacher_name="https://127.0.0.1:9/evil.pkl")
    save_state(os.path.join(run, "refine-state.pt"), state)
    r = _invoke(["--resume", run, "--kimg", 0.008])
    assert r.exit_code == 1
    assert "--resume needs --gen and --teacher again" in r.output and str(hostile) in r.output
    assert not marker.exists()
    r = _invoke(["--resume", run, "--gen", pkls["gen"], "--kimg", 0.008])
    assert r.exit_code == 1 and "--resume needs --teacher again" in r.output
    assert not marker.exists()


def test_launch_from_python_with_in_memory_networks(pkls, tmp_path):
    run = RunConfig(gen="", teacher="", kimg=0.008, snap=0.004, grid=2, outdir=str(tmp_path / "runs"),
                    refine=RefineConfig(batch=4, device="cpu", lr_gen=1e-3))
    gen, teacher = load_network_pkl(pkls["gen"]), load_network_pkl(pkls["teacher"])
    run_dir = launch(run, generator=gen, teacher=teacher, progress=False)
    files = set(os.listdir(run_dir))
    assert {"network-snapshot-000000.004.pkl", "network-snapshot-000000.008.pkl", "refine-state.pt",
            "stats.jsonl", "refine_options.json"} <= files
    out = load_network_pkl(os.path.join(run_dir, "network-snapshot-000000.008.pkl"))
    assert set(out) >= {"G", "G_ema", "D", "gan_refine"}
    # The stream's metadata holds plain data only (str, int, float, bool, list, dict, None).
    def plain(v):
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return v is None or type(v) in (str, int, float, bool)
    assert plain(out["gan_refine"])
    # ... and the exported stream names no global the input pickle did not (no gan_refine
    # class, no torch.torch_version.TorchVersion): upstream loaders need nothing new.
    from gan_refine.pickles import stream_globals
    with open(pkls["gen"], "rb") as f:
        original = stream_globals(f.read())
    with open(os.path.join(run_dir, "network-snapshot-000000.008.pkl"), "rb") as f:
        exported = stream_globals(f.read())
    assert exported <= original, sorted(exported - original)
    with pytest.raises(RunError, match="raise --kimg"):
        launch(run, state=load_state(run_dir), generator=gen, teacher=teacher, progress=False)


def test_log_txt_and_tensorboard_events(pkls, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    r = _invoke(["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--kimg", 0.012, "--snap", 0.008,
                 "--tensorboard", "on", "--outdir", tmp_path / "runs"] + FAST)
    assert r.exit_code == 0, r.output
    run = os.path.join(tmp_path / "runs", os.listdir(tmp_path / "runs")[0])
    log = open(os.path.join(run, "log.txt")).read()
    assert "Refining" in log and "Done:" in log and "snapshot at step 2" in log
    events = EventAccumulator(run, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/generator", "loss/fake_score", "gap/mean"} <= set(tags["scalars"])
    assert any(t.startswith("gap/sigma") for t in tags["scalars"])
    assert [e.step for e in events.Scalars("loss/generator")] == [1, 2, 3]
    stats = [json.loads(x) for x in open(os.path.join(run, "stats.jsonl"))]
    assert [e.value for e in events.Scalars("loss/generator")] == pytest.approx(
        [s["loss/generator"] for s in stats], rel=1e-6)
    assert "samples" in tags["images"] and len(events.Images("samples")) == 3  # init + 2 snapshots


def test_force_fp32_reaches_the_networks_fp16_switch(pkls, monkeypatch):
    """--force-fp32 passes force_fp32=True into every call of the generator, its EMA, the
    teacher and the fake score (StyleGAN's and EDM's own switch for their fp16 layers)."""
    seen = []
    gen, teacher = load_network_pkl(pkls["gen"]), load_network_pkl(pkls["teacher"])
    for net in (gen["G_ema"], teacher["ema"]):
        original = type(net).forward

        def spy(self, *args, _orig=original, **kw):
            seen.append((type(self).__name__, kw.get("force_fp32")))
            return _orig(self, *args, **kw)
        monkeypatch.setattr(type(net), "forward", spy)
    r = Refiner(gen, teacher, RefineConfig(batch=2, device="cpu", force_fp32=True))
    seen.clear()
    r.step()
    r.sample(2)
    assert seen and all(flag is True for _, flag in seen), seen
    assert {name for name, _ in seen} == {type(gen["G_ema"]).__name__, type(teacher["ema"]).__name__}
    r = Refiner(gen, teacher, RefineConfig(batch=2, device="cpu"))
    seen.clear()
    r.step()
    assert seen and all(flag is None for _, flag in seen)


def test_fp32_means_fp32_and_global_flags_are_restored(pkls):
    """During a step TF32 is off for matmul and cuDNN (precision fp32), as EDM sets it; the
    caller's own flags are back afterwards, whatever they were."""
    inside = []

    def loss(fake, teacher, x0, sigma, noise, c):
        inside.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return ikl_generator_loss(fake, teacher, x0, sigma, noise, c)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
        r = Refiner(load_network_pkl(pkls["gen"]), load_network_pkl(pkls["teacher"]),
                    RefineConfig(batch=2, device="cpu"), generator_loss=loss)
        r.step()
        assert inside == [(False, False)]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_metrics_seed_ranges_pick_the_evaluated_latents(tmp_path):
    """--metrics-seeds 100-139,7 evaluates exactly those seeds: the FID equals
    compute_metrics on the same list, and differs from seeds 0-40."""
    from gan_refine.metrics.compute import compute_metrics
    from gan_refine.seeds import parse_seeds
    import numpy as np
    ref = tmp_path / "real.npy"
    np.save(ref, np.random.default_rng(0).integers(0, 256, size=(60, 16, 16), dtype=np.uint8))
    args = ["--gen", "digits", "--teacher", "digits", "--kimg", 0.004, "--metrics", "fid",
            "--metrics-ref", ref, "--metrics-detector", "digits", "--outdir", tmp_path / "runs"] + FAST
    r = _invoke(args + ["--metrics-seeds", "100-139,7"])
    assert r.exit_code == 0, r.output
    run = os.path.join(tmp_path / "runs", os.listdir(tmp_path / "runs")[0])
    first = json.loads(open(os.path.join(run, "metrics.jsonl")).readline())
    assert first["num"] == 41
    G = load_network_pkl("digits")["G_ema"]
    want = compute_metrics(gen=G, ref=str(ref), metrics=("fid",), detector="digits", device="cpu",
                           seeds=parse_seeds("100-139,7"))["fid"]
    other = compute_metrics(gen=G, ref=str(ref), metrics=("fid",), detector="digits", device="cpu",
                            num=41)["fid"]
    assert first["results"]["fid"] == pytest.approx(want, rel=1e-9) and abs(want - other) > 1e-6
    r = _invoke(args + ["--metrics-seeds", "5-2"])
    assert r.exit_code == 1 and "--metrics-seeds" in r.output
