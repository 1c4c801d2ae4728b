"""Several processes (torchrun, gloo, loopback only) refine exactly like one process.

Every multi-process run here rendezvous on 127.0.0.1 with gloo bound to the loopback device,
and every subprocess has a hard timeout, so no test can hang or reach another machine.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from gan_refine import nets
from gan_refine.adapters import as_generator, as_teacher
from gan_refine.cli import main
from gan_refine.distributed import GlobalBatchRandomness
from gan_refine.pickles import load_network_pkl, save_network_pkl

RUN_TIMEOUT = 240  # seconds any torchrun invocation may take before the test fails
COMMON = ["--batch", "8", "--grid", "2", "--device", "cpu", "--lr-gen", "1e-3", "--lr-fake", "1e-3",
          "--snap", "1", "--dist-timeout", "60"]


@pytest.fixture(scope="module")
def pkls(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist-pkls")
    # The teachers map augmentation labels, as EDM's CIFAR-10 models do: parameters that
    # refinement never uses, which DistributedDataParallel must be told about.
    teacher = nets.edm_denoiser(res=8, seed=3, augment_dim=9)
    teacher_cond = nets.edm_denoiser(res=8, label_dim=3, seed=3, augment_dim=9)
    made = dict(gen=nets.stylegan2_pkl_dict(res=8, seed=0), teacher=nets.edm_pkl_dict(res=8, net=teacher),
                gen_cond=nets.stylegan2_pkl_dict(res=8, c_dim=3, seed=0),
                teacher_cond=nets.edm_pkl_dict(res=8, label_dim=3, net=teacher_cond))
    for name, data in made.items():
        save_network_pkl(data, d / f"{name}.pkl")
    return {name: str(d / f"{name}.pkl") for name in made}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1",
                TORCHELASTIC_ERROR_FILE="")


def _torchrun(nproc, args, nnodes=1, port=None, node_rank=None, **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
           "--nproc_per_node", str(nproc), "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{port or _free_port()}", "--rdzv-id", "gan-refine-test",
           "--local-addr", "127.0.0.1", "--max-restarts", "0"]
    if node_rank is not None:
        cmd += ["--node-rank", str(node_rank)]
    return cmd + ["-m", "gan_refine.cli"] + [str(a) for a in args]


def _run(cmd, cwd):
    out = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _single_run_dir(outdir):
    dirs = sorted(os.listdir(outdir))
    assert len(dirs) == 1, dirs  # one run folder: only rank 0 writes
    return os.path.join(outdir, dirs[0])


def _one_process(args, outdir):
    r = CliRunner().invoke(main, [str(a) for a in args] + ["--outdir", str(outdir)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return _single_run_dir(outdir)


def _compare_exports(a_pkl, b_pkl, start_pkl):
    """Largest difference between two exports over every G/G_ema tensor, relative to the
    tensor's own scale (max(1, max|t|), so a few float32 ulp read as ~1e-7), and how far
    training moved the weights on the same scale."""
    a, b, s = load_network_pkl(a_pkl), load_network_pkl(b_pkl), load_network_pkl(start_pkl)
    worst, moved = 0.0, 0.0
    for key in ("G_ema", "G"):
        sa, sb, ss = a[key].state_dict(), b[key].state_dict(), s[key].state_dict()
        assert sa.keys() == sb.keys()
        for name in sa:
            ta, tb, ts = sa[name].double(), sb[name].double(), ss[name].double()
            scale = max(1.0, ta.abs().max().item())
            worst = max(worst, (ta - tb).abs().max().item() / scale)
            moved = max(moved, (ta - ts).abs().max().item() / scale)
    return worst, moved


def _stats(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "stats.jsonl"))]


# ---------------------------------------------------------------------------- in one process

def test_per_sample_randomness_does_not_depend_on_the_split():
    """StyleGAN noise inputs and dropout drawn for a slice of the batch equal the same samples'
    draws in a whole-batch call (the same numbers, not just the same distribution)."""
    G = as_generator(nets.stylegan2_pkl_dict(res=8, seed=0))
    T = as_teacher(nets.edm_pkl_dict(res=8, label_dim=3, seed=3)).train()
    n, world = 8, 4
    z, c = torch.randn(n, G.z_dim), torch.zeros(n, 0)
    x, sigma = torch.randn(n, 3, 8, 8), torch.rand(n) + 0.1
    labels = torch.nn.functional.one_hot(torch.arange(n) % 3, 3).float()
    torch.manual_seed(7)
    whole_g = G(z, c)
    torch.manual_seed(9)
    whole_t = T(x, sigma, labels)
    for rank in range(world):
        part = slice(rank * n // world, (rank + 1) * n // world)
        with GlobalBatchRandomness(n // world, world, rank):
            torch.manual_seed(7)
            g = G(z[part], c[part])
            torch.manual_seed(9)
            t = T(x[part], sigma[part], labels[part])
        # Same numbers drawn; only the convolutions' batch-size-dependent rounding differs.
        assert (g - whole_g[part]).abs().max() < 1e-5 and (t - whole_t[part]).abs().max() < 1e-5
    torch.manual_seed(7)  # the control: without the mode a slice draws other noise
    assert not torch.allclose(G(z[:2], c[:2]), whole_g[:2])


def test_batch_must_split_evenly(pkls, tmp_path):
    r = subprocess.run(_torchrun(2, ["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--batch", 5,
                                     "--kimg", 0.01, "--device", "cpu", "--outdir", tmp_path / "runs"]),
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert r.returncode != 0
    assert "--batch 5 is the global batch, split evenly over the 2 processes" in r.stderr
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")


# ---------------------------------------------------------------------------- torchrun

@pytest.mark.slow
@pytest.mark.parametrize("cond", [False, True], ids=["uncond", "cond"])
def test_two_processes_match_one(pkls, tmp_path, cond):
    gen, teacher = (pkls["gen_cond"], pkls["teacher_cond"]) if cond else (pkls["gen"], pkls["teacher"])
    args = ["--gen", gen, "--teacher", teacher, "--kimg", 0.024, "--teacher-mode", "train"] + COMMON
    one = _one_process(args, tmp_path / "one")
    _run(_torchrun(2, args + ["--outdir", tmp_path / "two"]), tmp_path)
    two = _single_run_dir(tmp_path / "two")
    def files(d):  # TensorBoard names its event files by host, pid and time
        return sorted(f for f in os.listdir(d) if not f.startswith("events.out.tfevents"))
    assert files(one) == files(two)
    worst, moved = _compare_exports(os.path.join(one, "network-snapshot-000000.024.pkl"),
                                    os.path.join(two, "network-snapshot-000000.024.pkl"), gen)
    # The weights moved, and the two runs differ by float32 rounding of the gradient average
    # (a few ulp of weights of size ~1), hundreds of times less than the update itself.
    assert moved > 1e-3 and worst < 1e-5 and worst < moved / 100, (worst, moved)
    s1, s2 = _stats(one), _stats(two)
    assert [s["step"] for s in s2] == [1, 2, 3]
    for a, b in zip(s1, s2):
        assert b["loss/generator"] == pytest.approx(a["loss/generator"], rel=1e-4, abs=1e-6)
        assert b["loss/fake_score"] == pytest.approx(a["loss/fake_score"], rel=1e-5)
    opts = json.load(open(os.path.join(two, "refine_options.json")))
    assert opts["resolved"]["world_size"] == 2 and opts["resolved"]["batch_per_process"] == 4


@pytest.mark.slow
def test_metrics_in_parallel_match_one_process(tmp_path):
    import numpy as np
    ref = tmp_path / "real.npy"  # reference images, so KID (which needs them) runs too
    np.save(ref, np.random.default_rng(0).integers(0, 256, size=(80, 16, 16), dtype=np.uint8))
    args = ["--gen", "digits", "--teacher", "digits", "--kimg", 0.008, "--metrics", "fid,kid",
            "--metrics-ref", ref, "--metrics-num", 200, "--metrics-detector", "digits"] + COMMON
    args[args.index("--batch") + 1] = "4"
    one = _one_process(args, tmp_path / "one")
    _run(_torchrun(2, args + ["--outdir", tmp_path / "two"]), tmp_path)
    two = _single_run_dir(tmp_path / "two")
    m1 = [json.loads(x) for x in open(os.path.join(one, "metrics.jsonl"))]
    m2 = [json.loads(x) for x in open(os.path.join(two, "metrics.jsonl"))]
    assert [x["step"] for x in m2] == [0, 2] and all(x["num"] == 200 for x in m2)
    for a, b in zip(m1, m2):
        assert b["results"]["fid"] == pytest.approx(a["results"]["fid"], rel=1e-5)
        assert b["results"]["kid"] == pytest.approx(a["results"]["kid"], rel=1e-4, abs=1e-7)


@pytest.mark.slow
def test_two_nodes_on_one_machine_match_one_process(pkls, tmp_path):
    args = ["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--kimg", 0.016] + COMMON
    one = _one_process(args, tmp_path / "one")
    port = _free_port()
    cmd = _torchrun(1, args + ["--outdir", tmp_path / "two-nodes"], nnodes=2, port=port)
    nodes = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=RUN_TIMEOUT)[0] for p in nodes]
    finally:
        for p in nodes:
            p.kill()
    assert all(p.returncode == 0 for p in nodes), "\n".join(outs)
    two = _single_run_dir(tmp_path / "two-nodes")
    worst, moved = _compare_exports(os.path.join(one, "network-snapshot-000000.016.pkl"),
                                    os.path.join(two, "network-snapshot-000000.016.pkl"), pkls["gen"])
    assert moved > 1e-3 and worst < 1e-5 and worst < moved / 100, (worst, moved)


def _children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return kids


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds worker processes through /proc")
def test_killed_rank_stops_the_others_within_bounded_time(pkls, tmp_path):
    args = ["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--kimg", 100] + COMMON
    args += ["--outdir", tmp_path / "runs"]
    proc = subprocess.Popen(_torchrun(2, args), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + RUN_TIMEOUT
        stats = None
        while time.time() < deadline and proc.poll() is None:
            runs = os.listdir(tmp_path / "runs") if (tmp_path / "runs").exists() else []
            stats = os.path.join(tmp_path / "runs", runs[0], "stats.jsonl") if runs else None
            if stats and os.path.exists(stats) and os.path.getsize(stats) > 0:
                break
            time.sleep(0.2)
        assert proc.poll() is None and stats, "the run did not start"
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        victim = max(workers)  # either rank will do: rank 0 dying must stop rank 1 as well
        os.kill(victim, signal.SIGKILL)
        t0 = time.time()
        out = proc.communicate(timeout=120)[0]
        waited = time.time() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert waited < 60, waited
    assert all(not os.path.exists(f"/proc/{w}") or _is_zombie(w) for w in workers)
    run = _single_run_dir(tmp_path / "runs")
    assert not [f for f in os.listdir(run) if ".tmp" in f]
    # The survivor either notices the lost peer itself (our one-line error) or is stopped
    # first by torchrun's agent, which tears down the remaining workers with SIGTERM.
    assert "another process stopped or could not be reached" in out or "SIGTERM" in out, out[-3000:]
    assert "Traceback" not in "\n".join(line for line in out.splitlines()
                                        if "gan_refine" in line and "torch/distributed" not in line)


def _is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_sigterm_then_resume_on_two_and_on_one_process(pkls, tmp_path):
    """SIGTERM to torchrun stops both ranks after one snapshot; resuming on 2 processes is
    bit-exact, on 1 process equal to float32 rounding (the gradient average is summed in
    another order; every random draw is the same)."""
    args = ["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--kimg", 0.032] + COMMON
    args[args.index("--snap") + 1] = "0.016"
    _run(_torchrun(2, args + ["--outdir", tmp_path / "full"]), tmp_path)
    full = _single_run_dir(tmp_path / "full")

    proc = subprocess.Popen(_torchrun(2, args + ["--kimg", 100, "--outdir", tmp_path / "cut"]),
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.time() + RUN_TIMEOUT
        while time.time() < deadline and proc.poll() is None:
            runs = os.listdir(tmp_path / "cut") if (tmp_path / "cut").exists() else []
            stats = os.path.join(tmp_path / "cut", runs[0], "stats.jsonl") if runs else ""
            if os.path.exists(stats) and len(open(stats).readlines()) >= 1:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    cut = _single_run_dir(tmp_path / "cut")
    assert "Stopped by SIGTERM" in out, out
    from gan_refine.snapshot import load_state
    stopped_at = load_state(cut)["step"]
    assert 1 <= stopped_at < 4, stopped_at  # the full run is 4 steps long
    snaps = [f for f in os.listdir(cut) if f.startswith("network-snapshot-")]
    assert f"network-snapshot-{stopped_at * 8 / 1000:010.3f}.pkl" in snaps

    resume = ["--resume", cut, "--gen", pkls["gen"], "--teacher", pkls["teacher"], "--kimg", 0.032,
              "--dist-timeout", 60]
    _run(_torchrun(2, resume + ["--outdir", tmp_path / "again2"]), tmp_path)
    two = _single_run_dir(tmp_path / "again2")
    a = load_network_pkl(os.path.join(full, "network-snapshot-000000.032.pkl"))
    b = load_network_pkl(os.path.join(two, "network-snapshot-000000.032.pkl"))
    for key in ("G", "G_ema"):
        for (name, t), u in zip(a[key].state_dict().items(), b[key].state_dict().values()):
            assert torch.equal(t, u), f"{key}.{name}"
    one = _one_process(resume, tmp_path / "again1")
    worst, moved = _compare_exports(os.path.join(full, "network-snapshot-000000.032.pkl"),
                                    os.path.join(one, "network-snapshot-000000.032.pkl"), pkls["gen"])
    assert worst < 1e-5 and worst < moved / 100, (worst, moved)
