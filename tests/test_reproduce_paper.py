"""benchmarks/reproduce_paper.py --smoke: the paper experiment's commands end to end on the CPU,
with random networks of the CIFAR-10 sizes (2 processes, gloo on 127.0.0.1)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_smoke_run_refines_and_reports_fid_before_and_after(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "reproduce_paper.py"), "--smoke",
                          "--pairs", "uncond", "--outdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (row,) = json.load(open(tmp_path / "results.json"))
    assert row["pair"] == "uncond" and row["paper_before"] == 2.92 and row["paper_after"] == 2.71
    assert row["before"] > 0 and row["after_best"] > 0 and row["before"] != row["after_best"]
    run = row["run_dir"]
    opts = json.load(open(os.path.join(run, "refine_options.json")))
    assert opts["resolved"]["world_size"] == 2
    # The CIFAR-10 sizes: our StyleGAN2 'cifar' generator and a DDPM++ teacher.
    from gan_refine.pickles import load_network_pkl
    from gan_refine.nets import num_params
    snap = load_network_pkl(os.path.join(run, "network-snapshot-000000.004.pkl"))
    assert 15e6 < num_params(snap["G_ema"]) < 25e6
    teacher = load_network_pkl(opts["resolved"]["teacher"])
    assert 50e6 < num_params(teacher["ema"]) < 60e6
    assert "| uncond |" in out.stdout and "2.92 -> 2.71" in out.stdout
