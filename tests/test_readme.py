"""The README's quick start must stay true: CI runs its test line, and its main-job line works."""

import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quick_start():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", text, re.S).group(1)
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert len(lines) == 2, "the quick start is exactly two command lines"
    return lines


def test_ci_runs_the_readme_test_command():
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert _quick_start()[1] in ci.splitlines()


def test_main_job_line_runs(tmp_path):
    """The README's main job, shortened: the same command and options, with a later --kimg and
    --fake-warmup (click keeps the last occurrence) so it takes seconds, not minutes."""
    main_job = _quick_start()[0]
    install, _, run = main_job.partition(" && ")
    assert install.startswith("pip install ")
    argv = shlex.split(run)
    assert argv[0] == "gan-refine" and "--metrics" in argv and "--outdir" in argv
    outdir = tmp_path / "runs"
    argv = argv[1:] + ["--kimg", "0.064", "--fake-warmup", "2", "--metrics-num", "200",
                       "--outdir", str(outdir), "--device", "cpu"]
    out = subprocess.run([sys.executable, "-m", "gan_refine.cli", *argv], capture_output=True,
                         text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    before_after = re.search(r"G_ema at step 0 vs step 2: FID (\S+) -> (\S+)", out.stderr)
    assert before_after, out.stderr[-2000:]
    assert all(float(v) > 0 for v in before_after.groups())
    (run_dir,) = [d for d in os.listdir(outdir) if d[:5].isdigit()]
    files = os.listdir(outdir / run_dir)
    assert {"metrics.jsonl", "samples-before-after.png", "network-snapshot-000000.064.pkl"} <= set(files)


def test_selfcheck_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gan_refine.selfcheck", "--outdir", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "self-check passed" in out.stdout
    change = float(re.search(r"relative change of G_ema's images after refinement: (\S+)", out.stdout).group(1))
    assert change > 0
    runs = [d for d in os.listdir(tmp_path) if d[:5].isdigit()]
    assert len(runs) == 1
    files = os.listdir(tmp_path / runs[0])
    assert "refine_options.json" in files and any(f.endswith(".png") for f in files)
