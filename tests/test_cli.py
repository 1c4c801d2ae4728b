"""`gan-refine` end to end on tiny fixture pickles: outputs, Ctrl-C + resume, bad inputs."""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from gan_refine import compat, nets
from gan_refine.cli import main
from gan_refine.pickles import load_network_pkl, save_network_pkl
from gan_refine.refiner import Refiner
from gan_refine.snapshot import load_state

FAST = ["--batch", "4", "--grid", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def pkls(tmp_path_factory):
    d = tmp_path_factory.mktemp("pkls")
    paths = dict(gen=d / "gen.pkl", teacher=d / "teacher.pkl", teacher16=d / "teacher16.pkl",
                 gen_cond=d / "gen_cond.pkl")
    save_network_pkl(nets.stylegan2_pkl_dict(res=8, seed=0), paths["gen"])
    save_network_pkl(nets.edm_pkl_dict(res=8, seed=3), paths["teacher"])
    save_network_pkl(nets.edm_pkl_dict(res=16, seed=3), paths["teacher16"])
    save_network_pkl(nets.stylegan2_pkl_dict(res=8, c_dim=3, seed=0), paths["gen_cond"])
    return {k: str(v) for k, v in paths.items()}


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def run_dirs(outdir):
    return sorted(os.path.join(outdir, d) for d in os.listdir(outdir)) if os.path.isdir(outdir) else []


def no_temp_files(folder):
    return not [f for f in os.listdir(folder) if f.startswith(".") or ".tmp" in f]


FORWARD = textwrap.dedent('''
    import pickle, sys, torch
    try:
        import gan_refine
        sys.exit("gan_refine must not be importable here")
    except ImportError:
        pass
    def load(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    src, out = load(sys.argv[1]), load(sys.argv[2])
    z = torch.randn([3, src["G_ema"].z_dim], generator=torch.Generator().manual_seed(0))
    res = {}
    for key in ("G", "G_ema"):
        a = src[key](z, None, noise_mode="const")
        b = out[key](z, None, noise_mode="const")
        res[key] = (a - b).abs().max().item()
    res["D_same"] = all(torch.equal(p, q) for p, q in zip(src["D"].state_dict().values(),
                                                          out["D"].state_dict().values()))
    res["keys"] = sorted(out)
    res["meta"] = out["gan_refine"]
    print("RESULT", repr(res))
''')


def test_end_to_end_outputs(pkls, tmp_path):
    outdir = tmp_path / "runs"
    r = invoke(["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--kimg", 0.012, "--snap", 0.008,
                "--outdir", outdir, "--lr-gen", 1e-3] + FAST)
    assert r.exit_code == 0, r.output
    (run,) = run_dirs(outdir)
    assert os.path.basename(run).startswith("00000-gen-ikl")
    files = set(os.listdir(run))
    assert {"refine_options.json", "stats.jsonl", "refine-state.pt", "samples-init.png",
            "samples-000000.008.png", "samples-000000.012.png", "network-snapshot-000000.008.pkl",
            "network-snapshot-000000.012.pkl"} <= files
    assert no_temp_files(run)
    opts = json.load(open(os.path.join(run, "refine_options.json")))
    assert opts["refine"]["batch"] == 4 and opts["resolved"]["steps"] == 3
    lines = [json.loads(x) for x in open(os.path.join(run, "stats.jsonl"))]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert all("loss/generator" in x and "gap/mean" in x and "images_per_sec" in x for x in lines)
    for name in ("samples-init.png", "samples-000000.012.png"):
        with Image.open(os.path.join(run, name)) as im:
            im.load()
            assert im.mode == "RGB" and im.size == (2 * 64 + 4, 2 * 64 + 4)  # 8 px cells shown 8x

    # The exported pickle reloads in a process with no gan_refine (our compat folder standing in
    # for the user's own dnnlib/torch_utils), keeps the layout, and its generators have changed.
    blocker = tmp_path / "blocker" / "gan_refine"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no gan_refine here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker.parent), compat.COMPAT_DIR]),
               OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", FORWARD, pkls["gen"],
                          os.path.join(run, "network-snapshot-000000.012.pkl")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    res = eval(out.stdout.split("RESULT", 1)[1])
    assert res["keys"] == sorted(["training_set_kwargs", "G", "D", "G_ema", "augment_pipe", "gan_refine"])
    assert res["G_ema"] > 1e-6 and res["G"] > 1e-6
    assert res["D_same"]
    assert res["meta"]["options"]["lr_gen"] == 1e-3 and res["meta"]["step"] == 3


def test_dry_run_prints_resolved_config_and_writes_nothing(pkls, tmp_path):
    outdir = tmp_path / "runs"
    r = invoke(["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--dry-run", "--kimg", 1,
                "--outdir", outdir, "--loss", "sid", "--betas", 0.5, 0.99])
    assert r.exit_code == 0, r.output
    text, said = r.output.rsplit("Dry run: would write ", 1)
    cfg = json.loads(text)
    assert said.strip() == cfg["resolved"]["run_dir"] == os.path.join(str(outdir), "00000-gen-sid-kimg1")
    assert cfg["refine"]["loss"] == "sid" and cfg["refine"]["betas"] == [0.5, 0.99]
    assert cfg["refine"]["lr_gen"] == 1e-5 and cfg["refine"]["P_mean"] == -1.2
    assert cfg["resolved"]["steps"] == 8  # ceil(1000 / 128)
    assert not outdir.exists()


def _interrupt_at(monkeypatch, step, sig=signal.SIGINT):
    orig = Refiner.step

    def step_then_signal(self):
        stats = orig(self)
        if self.cur_step == step:
            os.kill(os.getpid(), sig)  # handled by the run: finish, snapshot, exit
        return stats
    monkeypatch.setattr(Refiner, "step", step_then_signal)


def _weights(pkl):
    data = load_network_pkl(pkl)
    return {f"{k}.{n}": t for k in ("G", "G_ema") for n, t in data[k].state_dict().items()}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_then_resume_equals_uninterrupted_run(pkls, tmp_path, monkeypatch, sig):
    args = ["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--kimg", 0.016, "--snap", 1,
            "--lr-gen", 1e-3, "--teacher-mode", "train"] + FAST
    r = invoke(args + ["--outdir", tmp_path / "full"])
    assert r.exit_code == 0, r.output
    (full,) = run_dirs(tmp_path / "full")

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with monkeypatch.context() as m:
        _interrupt_at(m, 2, sig)
        r = invoke(args + ["--outdir", tmp_path / "cut"])
    assert r.exit_code == 0, r.output
    assert f"Stopped by {signal.Signals(sig).name} after step 2" in r.output and "--resume" in r.output
    (cut,) = run_dirs(tmp_path / "cut")
    assert "network-snapshot-000000.008.pkl" in os.listdir(cut) and load_state(cut)["step"] == 2
    # The handlers the process had before (whatever the shell gave it) are back.
    assert {s: signal.getsignal(s) for s in before} == before

    # The printed command: --resume and the networks again; length, outputs and settings
    # come from the state (the interrupted run's own --kimg, --outdir and --grid).
    hint = r.output.split("continue with: ", 1)[1].split()
    assert hint[:2] == ["gan-refine", "--resume"]
    r = invoke(hint[1:])
    assert r.exit_code == 0, r.output
    resumed = run_dirs(tmp_path / "cut")[1]
    a = _weights(os.path.join(full, "network-snapshot-000000.016.pkl"))
    b = _weights(os.path.join(resumed, "network-snapshot-000000.016.pkl"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    opts = json.load(open(os.path.join(resumed, "refine_options.json")))
    assert opts["refine"]["teacher_mode"] == "train" and opts["resolved"]["start_step"] == 2

    r = invoke(hint[1:] + ["--kimg", 0.004])
    assert r.exit_code == 1 and "raise --kimg" in r.output


def test_nan_in_generator_stops_with_one_line_and_keeps_last_snapshot(pkls, tmp_path, monkeypatch):
    orig = Refiner.step

    def poisoned(self):
        if self.cur_step == 2:
            with torch.no_grad():
                for p in self.G.parameters():
                    p.fill_(float("nan"))
        return orig(self)
    monkeypatch.setattr(Refiner, "step", poisoned)
    outdir = tmp_path / "runs"
    r = invoke(["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--kimg", 0.02,
                "--snap", 0.004, "--outdir", outdir] + FAST)
    assert r.exit_code == 1
    err = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and "NaN/inf at step 3" in err[0]
    assert "network-snapshot-000000.008.pkl" in err[0]
    (run,) = run_dirs(outdir)
    assert not [f for f in os.listdir(run) if "000003" in f]
    assert no_temp_files(run)
    with open(os.path.join(run, "network-snapshot-000000.008.pkl"), "rb") as f:
        data = pickle.load(f)
    assert all(torch.isfinite(p).all() for p in data["G_ema"].parameters())
    assert load_state(run)["step"] == 2


@pytest.mark.parametrize("case, pattern", [
    ("resolution", "8x8 images but the teacher denoises 16x16"),
    ("labels", "class-conditional with 3 labels but the teacher is unconditional"),
    ("missing", "no such file"),
    ("unknown", "is not a file, a URL or a model name"),
    ("kimg0", "--kimg must be a finite number greater than 0"),
    ("kimg_inf", "--kimg must be a finite number greater than 0"),
    ("snap_inf", "--snap must be a finite number greater than 0"),
    ("seed_huge", "--seed"),
    ("device", "--device 'foo' is not a device"),
    ("probs_negative", "non-negative class weights"),
    ("probs_zero", "non-negative class weights"),
    ("outdir_under_file", "cannot create the run folder there"),
    ("no_edm_match", "no edm teacher"),
    ("precision", "needs a CUDA device"),
    ("label_probs", "--label-probs"),
])
def test_bad_inputs_give_one_line_errors_and_no_files(pkls, tmp_path, case, pattern):
    gen, teacher = pkls["gen"], pkls["teacher"]
    extra = []
    if case == "resolution":
        teacher = pkls["teacher16"]
    elif case == "labels":
        gen = pkls["gen_cond"]
    elif case == "missing":
        gen = str(tmp_path / "missing.pkl")
    elif case == "unknown":
        teacher = "no-such-model-name"
    elif case == "kimg0":
        extra = ["--kimg", "0"]
    elif case == "no_edm_match":
        teacher = "edm"
    elif case == "precision":
        extra = ["--precision", "fp16"]
    elif case == "label_probs":
        extra = ["--label-probs", "1,x"]
    else:
        extra = {"kimg_inf": ["--kimg", "inf"], "snap_inf": ["--snap", "inf"],
                 "seed_huge": ["--seed", str(2 ** 70)], "device": ["--device", "foo"],
                 "probs_negative": ["--label-probs", "1,-1,1"], "probs_zero": ["--label-probs", "0,0,0"],
                 "outdir_under_file": []}[case]
        if case.startswith("probs"):
            gen, teacher = pkls["gen_cond"], pkls["teacher"]
    outdir = tmp_path / "runs"
    if case == "outdir_under_file":
        (tmp_path / "a-file").write_text("not a folder")
        outdir = tmp_path / "a-file" / "runs"
    r = invoke(["--gen", gen, "--teacher", teacher, "--outdir", outdir] + FAST + extra)
    assert r.exit_code != 0
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), r.output
    assert pattern in lines[0]
    assert run_dirs(outdir) == []


def _digits_fid(G, num, stats_path):
    """FID of G's images at seeds 0..num-1 (StyleGAN's latent protocol) against a statistics
    file, computed with numpy/scipy alone: an independent check of the CLI's --metrics wiring."""
    import warnings
    import numpy as np
    import scipy.linalg
    from gan_refine import pretrained
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in range(num)])).float()
    images = []
    for start in range(0, num, 64):   # the noise inputs are seeded per batch of 64 seeds
        torch.manual_seed(start)
        with torch.no_grad():
            images.append(G(z[start:start + 64], None, noise_mode="random"))
    u8 = (torch.cat(images) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        det = torch.jit.load(pretrained.resolve("digits-detector")).eval()
    with torch.no_grad():
        f = det(u8, return_features=True).double().numpy()
    with np.load(stats_path) as ref:
        mu2, s2 = ref["mu"], ref["sigma"]
    mu1, s1 = f.mean(0), np.cov(f, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_metrics_before_and_at_snapshots_with_before_after_grid(tmp_path):
    from gan_refine import pretrained
    outdir = tmp_path / "runs"
    r = invoke(["--gen", "digits", "--teacher", "digits", "--kimg", 0.008, "--snap", 0.004,
                "--metrics", "fid", "--metrics-num", 300, "--lr-gen", 1e-3, "--outdir", outdir] + FAST)
    assert r.exit_code == 0, r.output
    (run,) = run_dirs(outdir)
    lines = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    assert [x["step"] for x in lines] == [0, 1, 2]
    assert lines[0]["snapshot_pkl"] is None and lines[2]["snapshot_pkl"] == "network-snapshot-000000.008.pkl"
    assert all(x["num"] == 300 and x["detector"] == "digits" and x["ref"] == "fid-ref-digits-16x16"
               for x in lines)
    stats = pretrained.resolve("fid-ref-digits-16x16")
    start = load_network_pkl("digits")["G_ema"]
    final = load_network_pkl(os.path.join(run, "network-snapshot-000000.008.pkl"))["G_ema"]
    fid0, fid2 = lines[0]["results"]["fid"], lines[2]["results"]["fid"]
    assert fid0 == pytest.approx(_digits_fid(start, 300, stats), rel=1e-6)
    assert fid2 == pytest.approx(_digits_fid(final, 300, stats), rel=1e-6)
    assert abs(fid2 - fid0) > 1e-4   # the refined G_ema was evaluated, not the starting one
    assert "G_ema at step 0 vs step 2: FID" in r.output
    with Image.open(os.path.join(run, "samples-before-after.png")) as im:
        # Two 2x2 grids of 16 px digits shown 4x (64 px cells) with a 4 px gutter between
        # cells, and a band a quarter of a cell wide (16 px) between the two grids.
        grid = 2 * 64 + 4
        assert im.size == (2 * grid + 16, grid), im.size
    opts = json.load(open(os.path.join(run, "refine_options.json")))
    assert opts["resolved"]["metrics"] == dict(metrics=["fid"], ref="fid-ref-digits-16x16",
                                               detector="digits", num=300)


@pytest.mark.parametrize("args, pattern", [
    (["--metrics", "fud"], "unknown metric(s) fud"),
    (["--metrics", "fid"], "--metrics-ref auto: the table has no reference statistics"),
    (["--metrics", "kid", "--metrics-ref", "fid-ref-digits-16x16"], "need reference images"),
    (["--metrics", "fid", "--metrics-ref", "missing-stats.npz"], "no such file or folder"),
    (["--metrics", "fid", "--metrics-ref", "digits-edm"], "is a teacher, not reference statistics"),
])
def test_bad_metrics_options_fail_before_any_work(pkls, tmp_path, args, pattern):
    outdir = tmp_path / "runs"
    r = invoke(["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--outdir", outdir] + FAST + args)
    assert r.exit_code != 0
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and pattern in lines[0], r.output
    assert run_dirs(outdir) == []


def test_metrics_with_reference_images_run_the_detector_over_them_once(tmp_path, monkeypatch):
    import numpy as np
    from gan_refine.metrics import compute
    rng = np.random.default_rng(0)
    ref = tmp_path / "real.npy"
    np.save(ref, rng.integers(0, 256, size=(60, 16, 16), dtype=np.uint8))
    seen = []
    real_stats = compute.compute_feature_stats_multi  # every detector pass goes through it

    def counting(source, *args, **kw):
        seen.append(type(source).__name__)
        return real_stats(source, *args, **kw)
    monkeypatch.setattr(compute, "compute_feature_stats_multi", counting)
    outdir = tmp_path / "runs"
    r = invoke(["--gen", "digits", "--teacher", "digits", "--kimg", 0.008, "--metrics", "fid,kid",
                "--metrics-ref", ref, "--metrics-num", 50, "--metrics-detector", "digits",
                "--outdir", outdir] + FAST)
    assert r.exit_code == 0, r.output
    assert seen.count("ArraySource") == 1 and seen.count("GeneratorSource") == 2
    (run,) = run_dirs(outdir)
    lines = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    assert [x["step"] for x in lines] == [0, 2] and all(x["detector"] == "digits" for x in lines)
    # The cached reference gives what a fresh evaluation against the array gives.
    final = load_network_pkl(os.path.join(run, "network-snapshot-000000.008.pkl"))["G_ema"]
    fresh = compute.compute_metrics(gen=final, ref=str(ref), metrics=("fid", "kid"), num=50,
                                    detector="digits", device="cpu", seed=0)
    assert lines[1]["results"]["fid"] == pytest.approx(fresh["fid"], rel=1e-9)
    assert lines[1]["results"]["kid"] == pytest.approx(fresh["kid"], rel=1e-9)


def test_docs_options_table_is_the_commands_own():
    """docs/cli.md lists exactly the options, defaults and help of `gan-refine --help`."""
    from gan_refine.cli import options_markdown
    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "cli.md"), encoding="utf-8").read()
    table = docs.split("<!-- options table: begin -->\n", 1)[1].split("<!-- options table: end -->", 1)[0]
    assert table == options_markdown(), "regenerate the table in docs/cli.md with options_markdown()"
    helptext = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    for row in table.splitlines()[2:]:
        flag = row.split("`")[1]
        assert flag in helptext, flag


def test_presets_explicit_options_win_and_sources_are_reported(pkls, tmp_path):
    from gan_refine.config import PRESETS, RefineConfig
    r = invoke(["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--preset", "digits",
                "--lr-fake", 3e-3, "--dry-run", "--outdir", tmp_path / "runs"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.output.rsplit("Dry run:", 1)[0])
    digits = PRESETS["digits"]["method"]
    assert cfg["refine"]["batch"] == digits["batch"] == 32 and cfg["refine"]["P_mean"] == 0.0
    assert cfg["refine"]["lr_fake"] == 3e-3  # given explicitly: wins over the preset's 1e-3
    assert cfg["refine"]["P_std"] == RefineConfig().P_std  # not in the preset: the default
    assert cfg["sources"]["batch"] == "preset digits" and cfg["sources"]["lr_fake"] == "command line"
    assert cfg["sources"]["P_std"] == "default"
    r = invoke(["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--preset", "paper-cifar10",
                "--dry-run", "--outdir", tmp_path / "runs"])
    cfg = json.loads(r.output.rsplit("Dry run:", 1)[0])
    assert cfg["refine"]["teacher_mode"] == "train" and cfg["refine"]["lr_gen"] == 1e-5
    assert cfg["refine"]["betas"] == [0.0, 0.999] and cfg["refine"]["batch"] == 128


def test_preset_noise_draws_and_the_single_forward_order_fail_in_one_line_that_names_the_fix(pkls, tmp_path):
    # The digits preset averages over several noise draws, which only the official order does:
    # asking for the single-forward order on top of it must stop before any work, in one line.
    r = invoke(["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--preset", "digits",
                "--update-order", "single-forward", "--kimg", 0.004, "--grid", 0, "--device", "cpu",
                "--outdir", tmp_path / "runs"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "--noise-draws 1" in r.output and not run_dirs(tmp_path / "runs")
    r = invoke(["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--preset", "digits",
                "--update-order", "single-forward", "--noise-draws", 1, "--dry-run",
                "--outdir", tmp_path / "runs"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.output.rsplit("Dry run:", 1)[0])
    assert cfg["refine"]["noise_draws"] == 1 and cfg["sources"]["noise_draws"] == "command line"


def test_resumed_run_keeps_its_preset_and_its_own_values(pkls, tmp_path):
    from gan_refine.config import PRESETS
    r = invoke(["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--preset", "digits", "--batch", 4,
                "--fake-warmup", 1, "--kimg", 0.004, "--grid", 0, "--device", "cpu", "--outdir", tmp_path / "runs"])
    assert r.exit_code == 0, r.output
    (run,) = run_dirs(tmp_path / "runs")
    r = invoke(["--resume", run, "--gen", pkls["gen"], "--teacher", pkls["teacher"], "--kimg", 0.008,
                "--dry-run"])
    cfg = json.loads(r.output.rsplit("Dry run:", 1)[0])
    assert cfg["preset"] == "digits" and cfg["refine"]["batch"] == 4 and cfg["refine"]["lr_gen"] == PRESETS["digits"]["method"]["lr_gen"]
    assert cfg["sources"]["batch"] == "resumed state" and cfg["outdir"] == str(tmp_path / "runs")


def test_overlap_runs_and_says_when_it_cannot_be_used(pkls, tmp_path):
    common = ["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--batch", 4, "--kimg", 0.008,
              "--grid", 0, "--device", "cpu", "--overlap"]
    r = invoke(common + ["--outdir", tmp_path / "a"])
    assert r.exit_code == 0, r.output
    assert "Note: --overlap is not used in this run (it needs update_order single-forward)" in r.output
    r = invoke(common + ["--update-order", "single-forward", "--outdir", tmp_path / "b"])
    assert r.exit_code == 0, r.output
    assert "--overlap is not used" not in r.output
    (run,) = run_dirs(tmp_path / "b")
    with open(os.path.join(run, "refine_options.json")) as f:
        assert json.load(f)["refine"]["overlap"] is True
