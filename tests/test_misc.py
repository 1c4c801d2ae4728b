"""torch_utils.misc: cached constants, shape checks, parameter copying, samplers, summaries."""

import itertools
import warnings

import numpy as np
import pytest
import torch

import gan_refine  # noqa: F401  (installs the torch_utils alias)
from torch_utils import misc


def test_constant_values_and_caching():
    a = misc.constant([1.0, 2.0, 3.0])
    assert a.dtype == torch.get_default_dtype() and a.device == torch.device("cpu")
    assert a.tolist() == [1.0, 2.0, 3.0]
    assert misc.constant([1.0, 2.0, 3.0]) is a
    assert misc.constant(np.array([1.0, 2.0, 3.0])) is a  # same value, same key
    assert misc.constant([1.0, 2.0, 4.0]) is not a
    assert misc.constant([1.0, 2.0, 3.0], dtype=torch.float64) is not a
    assert misc.constant([1.0, 2.0, 3.0], device="cpu") is a

    b = misc.constant([1.0, 2.0, 3.0], shape=[2, 3])
    assert b is not a and b.shape == (2, 3) and b.is_contiguous()
    assert b.tolist() == [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    assert misc.constant([1.0, 2.0, 3.0], shape=(2, 3)) is b

    c = misc.constant(0.5, shape=[1, 3, 2, 2], memory_format=torch.channels_last)
    assert c.is_contiguous(memory_format=torch.channels_last) and (c == 0.5).all()
    assert misc.constant(0.5, shape=[1, 3, 2, 2]) is not c
    assert misc.constant(7, dtype=torch.int64).item() == 7
    with pytest.raises(RuntimeError):
        misc.constant([1.0, 2.0], shape=[3])

    ref = torch.zeros(2, dtype=torch.float64)
    d = misc.const_like(ref, 1.5, shape=[2])
    assert d.dtype == torch.float64 and d.tolist() == [1.5, 1.5]
    assert misc.constant(1.5, shape=[2], dtype=torch.float64) is d


def test_nan_to_num():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.5])
    y = misc.nan_to_num(x, nan=0.0, posinf=9.0, neginf=-9.0)
    assert y.tolist() == [0.0, 9.0, -9.0, 1.5]
    big = misc.nan_to_num(x)
    assert big[1].item() == torch.finfo(torch.float32).max


def test_assert_shape():
    t = torch.zeros(2, 3, 4)
    misc.assert_shape(t, [2, 3, 4])
    misc.assert_shape(t, [None, 3, None])
    with pytest.raises(AssertionError, match="dimensions"):
        misc.assert_shape(t, [2, 3])
    with pytest.raises(AssertionError, match="dimension 1"):
        misc.assert_shape(t, [2, 5, 4])
    misc.assert_shape(t, [torch.tensor(2), None, 4])
    with pytest.raises(Exception):
        misc.assert_shape(t, [torch.tensor(3), None, 4])


@pytest.mark.filterwarnings("ignore:.*torch.jit.trace.*:FutureWarning")
def test_assert_shape_under_tracing():
    def fn(x):
        misc.assert_shape(x, [None, 3])
        return x * 2

    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(fn, torch.zeros(2, 3))
    assert traced(torch.ones(4, 3)).tolist() == [[2.0] * 3] * 4


def test_suppress_tracer_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with misc.suppress_tracer_warnings():
            warnings.warn("hidden", torch.jit.TracerWarning)
        warnings.warn("shown", torch.jit.TracerWarning)
    assert [str(w.message) for w in caught] == ["shown"]


def test_symbolic_assert():
    misc.symbolic_assert(True, "fine")
    with pytest.raises(AssertionError, match="boom"):
        misc.symbolic_assert(False, "boom")


def test_profiled_function_keeps_name_and_result():
    @misc.profiled_function
    def my_op(a, b=1):
        """doc"""
        return a + b

    assert my_op.__name__ == "my_op" and my_op.__doc__ == "doc"
    with torch.autograd.profiler.profile() as prof:
        assert my_op(2, b=3) == 5
    assert any(evt.name == "my_op" for evt in prof.function_events)


class _Net(torch.nn.Module):
    def __init__(self, width=3):
        super().__init__()
        self.fc = torch.nn.Linear(width, 2)
        self.norm = torch.nn.BatchNorm1d(2)
        self.register_buffer("stat", torch.zeros(4))

    def forward(self, x):
        return self.norm(self.fc(x)) + self.stat[:2]


def test_params_and_buffers():
    net = _Net()
    names = [name for name, _ in misc.named_params_and_buffers(net)]
    assert names == ["fc.weight", "fc.bias", "norm.weight", "norm.bias",
                     "stat", "norm.running_mean", "norm.running_var", "norm.num_batches_tracked"]
    assert [id(t) for t in misc.params_and_buffers(net)] == [id(t) for _, t in misc.named_params_and_buffers(net)]


def test_copy_params_and_buffers():
    torch.manual_seed(0)
    src, dst = _Net(), _Net()
    src.stat.fill_(5)
    dst.fc.weight.requires_grad_(False)
    dst_weight = dst.fc.weight
    misc.copy_params_and_buffers(src, dst, require_all=True)
    for (name, a), (_, b) in zip(misc.named_params_and_buffers(src), misc.named_params_and_buffers(dst)):
        assert torch.equal(a, b), name
    assert dst.fc.weight is dst_weight and not dst.fc.weight.requires_grad  # in place, flags kept
    assert dst.fc.bias.requires_grad

    # A destination with extra tensors: copied partially, or an error with require_all.
    class Bigger(_Net):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Parameter(torch.full([2], 7.0))

    big = Bigger()
    misc.copy_params_and_buffers(src, big)
    assert torch.equal(big.fc.weight, src.fc.weight) and big.extra.tolist() == [7.0, 7.0]
    with pytest.raises(AssertionError, match="extra"):
        misc.copy_params_and_buffers(src, Bigger(), require_all=True)


def test_ddp_sync_plain_module():
    net = _Net()
    with misc.ddp_sync(net, sync=False):
        pass
    with misc.ddp_sync(net, sync=True):
        pass
    with pytest.raises(AssertionError):
        with misc.ddp_sync(object(), sync=True):
            pass


def test_check_ddp_consistency_single_process(tmp_path):
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    dist.init_process_group("gloo", init_method=(tmp_path / "rendezvous").as_uri(), rank=0, world_size=1)
    try:
        net = _Net()
        net.stat[0] = float("nan")  # NaNs must compare equal
        misc.check_ddp_consistency(net)
        misc.check_ddp_consistency(net, ignore_regex=r".*\.stat")
    finally:
        dist.destroy_process_group()


class _Dataset:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_infinite_sampler_sequential_and_ranks():
    seq = list(itertools.islice(iter(misc.InfiniteSampler(_Dataset(5), shuffle=False)), 12))
    assert seq == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    # Ranks take interleaved items of the same stream.
    full = list(itertools.islice(iter(misc.InfiniteSampler(_Dataset(7), seed=3)), 40))
    for rank in range(2):
        part = list(itertools.islice(iter(misc.InfiniteSampler(_Dataset(7), rank=rank, num_replicas=2, seed=3)), 20))
        assert part == full[rank::2]


def test_infinite_sampler_shuffle():
    data = _Dataset(10)
    no_window = list(itertools.islice(iter(misc.InfiniteSampler(data, seed=1, window_size=0)), 30))
    assert sorted(no_window[:10]) == list(range(10))
    assert no_window[:10] == no_window[10:20] == no_window[20:]  # a fixed permutation repeats
    assert no_window[:10] != list(range(10))
    windowed = list(itertools.islice(iter(misc.InfiniteSampler(data, seed=1)), 50))
    assert windowed[0] == no_window[0]  # the first item is drawn before any swap
    assert windowed[10:20] != windowed[:10] and windowed[:30] != no_window
    assert set(windowed) == set(range(10))
    assert windowed == list(itertools.islice(iter(misc.InfiniteSampler(data, seed=1)), 50))  # deterministic


def test_print_module_summary(capsys):
    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = _Net()
            self.b = torch.nn.Linear(2, 2)
            self.b2 = self.b  # shared module: its parameters are counted once

        def forward(self, x):
            y = self.b2(self.b(self.a(x)))
            return y, y.sum()

    net = Outer()
    x = torch.randn(4, 3)
    out = misc.print_module_summary(net, [x])
    assert isinstance(out, tuple) and out[0].shape == (4, 2)
    text = capsys.readouterr().out
    lines = [line.split() for line in text.strip().splitlines()]
    assert lines[0][0] == "Outer"
    total = [row for row in lines if row[0] == "Total"][0]
    n_params = sum(p.numel() for p in net.parameters())
    n_buffers = sum(b.numel() for b in net.buffers())
    assert total[1:3] == [str(n_params), str(n_buffers)]
    names = [row[0] for row in lines]
    assert "a.fc" in names and "<top-level>:0" in names and "<top-level>:1" in names
    top = [row for row in lines if row[0] == "<top-level>:0"][0]
    assert top[3:] == ["[4,", "2]", "float32"]

    # Shallow nesting drops the inner layers but keeps the totals.
    misc.print_module_summary(net, [x], max_nesting=1)
    lines = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert "a.fc" not in [row[0] for row in lines]
    assert [row for row in lines if row[0] == "Total"][0][1:3] == [str(n_params), str(n_buffers)]
