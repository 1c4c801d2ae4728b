"""The single-forward update order on several processes (torchrun, gloo, loopback only) refines
like one process: one fake-score forward through DistributedDataParallel serves both losses."""

import os

import pytest

from test_distributed import (COMMON, _compare_exports, _one_process, _run, _single_run_dir,  # noqa: F401
                              _stats, _torchrun, pkls)


@pytest.mark.parametrize("teacher_mode", ["train", "eval"])
def test_single_forward_on_two_processes_matches_one(pkls, tmp_path, teacher_mode):  # noqa: F811
    args = ["--gen", pkls["gen"], "--teacher", pkls["teacher"], "--kimg", 0.024, "--teacher-mode",
            teacher_mode, "--update-order", "single-forward", "--fake-updates", "2"] + COMMON
    one = _one_process(args, tmp_path / "one")
    _run(_torchrun(2, args + ["--outdir", tmp_path / "two"]), tmp_path)
    two = _single_run_dir(tmp_path / "two")
    worst, moved = _compare_exports(os.path.join(one, "network-snapshot-000000.024.pkl"),
                                    os.path.join(two, "network-snapshot-000000.024.pkl"), pkls["gen"])
    assert moved > 1e-3 and worst < 1e-5 and worst < moved / 100, (worst, moved)
    s1, s2 = _stats(one), _stats(two)
    assert [s["step"] for s in s2] == [1, 2, 3]
    for a, b in zip(s1, s2):
        assert b["loss/fake_score"] == pytest.approx(a["loss/fake_score"], rel=1e-5)
        assert b["grad_norm/generator"] == pytest.approx(a["grad_norm/generator"], rel=1e-4)
