"""benchmarks/step_speed.py on tiny networks: its plain official loop computes what the Refiner's
reference order computes, and its check would notice if they differed."""

import math
import os
import sys

import pytest
import torch

from gan_refine import nets
from gan_refine.refiner import Refiner

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import step_speed  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pair():
    return nets.stylegan2_pkl_dict(res=8, seed=0), nets.edm_pkl_dict(res=8, seed=3)


@pytest.mark.parametrize("teacher_mode", ["eval", "train"])
def test_official_loop_and_refiner_compute_the_same_step(pair, teacher_mode):
    out = step_speed.check_same_gradients(*pair, 4, CPU, teacher_mode)
    assert max(v for k, v in out.items() if not k.startswith("control")) < 1e-5, out
    assert out["control: next step's generator gradient"] > 1e-2, out


def test_the_check_notices_a_different_generator_loss(pair, monkeypatch):
    orig = Refiner._generator_loss

    def doubled(self, *args):
        per_sample, figs = orig(self, *args)
        return 2 * per_sample, figs
    monkeypatch.setattr(Refiner, "_generator_loss", doubled)
    out = step_speed.check_same_gradients(*pair, 4, CPU, "eval")
    assert out["generator gradient"] == pytest.approx(1.0, rel=1e-4)  # max|2g - g| / max|g|
    assert out["fake-score gradient"] < 1e-5


def test_time_shares_cover_the_step(pair):
    loop = step_speed.OfficialLoop(*pair, 4, CPU)
    stats = loop.step()
    assert all(math.isfinite(v) for v in stats.values())
    shares, seconds = step_speed.time_shares(loop.step, loop.nets(), 2, CPU)
    assert set(shares) == {"generator", "teacher", "fake score", "optimiser", "overhead"}
    assert sum(shares.values()) == pytest.approx(1.0) and min(shares.values()) >= 0 and seconds > 0
    assert shares["fake score"] > shares["teacher"] > 0  # forward+backward against a forward
