"""The README's quick start must stay true: CI runs its test line, and its main-job line works."""

import os
import re
import subprocess
import sys

import pytest

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
    main_job = _quick_start()[0]
    install, _, run = main_job.partition(" && ")
    assert install.startswith("pip install ")
    # The package is already installed in the test environment; run the job itself.
    assert run.startswith("python -m gan_refine.selfcheck")
    args = run.split()[3:]
    out = subprocess.run([sys.executable, "-m", "gan_refine.selfcheck", *args, "--outdir", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "self-check passed" in out.stdout
    change = float(re.search(r"relative change of G_ema's images after refinement: (\S+)", out.stdout).group(1))
    assert change > 0
    runs = [d for d in os.listdir(tmp_path) if d[:5].isdigit()]
    assert len(runs) == 1
    files = os.listdir(tmp_path / runs[0])
    assert "refine_options.json" in files and any(f.endswith(".png") for f in files)
