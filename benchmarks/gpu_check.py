"""One-shot GPU check of our CUDA ops: build, compare against the reference path, time.

    python benchmarks/gpu_check.py --out docs/cuda_ops_h100     # on a GPU machine (< 5 min on an H100)
    python benchmarks/gpu_check.py --cpu-rehearsal              # the same logic on CPU, tiny shapes

Checks, on random inputs of the shapes the CIFAR-10 StyleGAN2-ADA (512 channels at 4..32 px,
batch 64, fp16 from 8 px up) and StyleGAN3 (filtered_lrelu, 12-tap filters, up 2 / down 2,
36..52 px) generators use:
  * relative error ||kernel - ref|| / ||ref|| of outputs and of gradients w.r.t. every input,
    in fp32 (limit 1e-5) and fp16 (limit: 2e-3, or twice the reference path's own fp16 error);
    the reference side runs in fp32 (TF32 off) from the same inputs;
  * torch.autograd.gradcheck (and gradgradcheck where the op has a second derivative) in fp64;
then times kernel vs reference, forward and forward+backward (CUDA events, warm-up, median).
Prints everything needed to debug a failure, writes <out>.md and <out>.json, and exits 1 if
any check fails (2 if the plugins do not build). In the rehearsal both sides are the
reference path, so every check passes trivially: it tests the script, not the kernels.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gan_refine  # noqa: E402,F401 - makes torch_utils importable
from gan_refine.snapshot import atomic_write_text  # noqa: E402
from torch_utils import custom_ops  # noqa: E402
from torch_utils.ops import _cuda, bias_act, filtered_lrelu, upfirdn2d  # noqa: E402

SQRT2 = math.sqrt(2)


# ----------------------------------------------------------------------------------------------
# Cases: name, op, input shapes, dtypes. `run(impl, *tensors)` calls the public op.

def _f2d(device):
    return upfirdn2d.setup_filter([1, 3, 3, 1], device=device)          # 4x4 outer product


def _f12(device, seed):
    g = np.random.default_rng(seed)
    return upfirdn2d.setup_filter(g.random(12) + 0.5, device=device)    # 1-D, separable


def bias_act_case(name, shape, act="lrelu", clamp=256.0, dtypes=("float32", "float16"), scale=1.0):
    def run(impl, x, b):
        return bias_act.bias_act(x, b, act=act, clamp=clamp, impl=impl)
    return dict(name=name, op="bias_act", shapes=[shape, [shape[1]]], dtypes=dtypes, run=run, scale=[scale, 1.0])


def upfirdn_case(name, shape, up=1, down=1, padding=0, gain=1, taps=4, dtypes=("float32", "float16")):
    def run(impl, x, _cache={}):
        key = (str(x.device), taps)
        if key not in _cache:
            _cache[key] = _f2d(x.device) if taps == 4 else _f12(x.device, 1)
        return upfirdn2d.upfirdn2d(x, _cache[key], up=up, down=down, padding=padding, gain=gain, impl=impl)
    return dict(name=name, op="upfirdn2d", shapes=[shape], dtypes=dtypes, run=run, scale=[1.0])


def flrelu_case(name, shape, padding, up=2, down=2, clamp=256.0, taps=12, dtypes=("float32", "float16"),
                scale=1.0):
    def run(impl, x, b, _cache={}):
        key = str(x.device)
        if key not in _cache:
            _cache[key] = (_f12(x.device, 2), _f12(x.device, 3)) if taps == 12 else (_f2d(x.device), _f2d(x.device))
        fu, fd = _cache[key]
        return filtered_lrelu.filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=padding, gain=SQRT2, slope=0.2,
                                             clamp=clamp, impl=impl)
    return dict(name=name, op="filtered_lrelu", shapes=[shape, [shape[1]]], dtypes=dtypes, run=run,
                scale=[scale, 1.0])


def full_cases(batch=64, ch=512):
    cases = []
    for r in (4, 8, 16, 32):
        dt = ("float32",) if r == 4 else ("float32", "float16")
        # Scaled so that about 7% of the outputs hit the clamp (and get zero gradient).
        cases.append(bias_act_case(f"sg2 bias_act lrelu {r}px", [batch, ch, r, r], dtypes=dt, scale=100.0))
    for r in (4, 8, 16):  # FIR after the stride-2 transposed 3x3 conv of conv2d_resample(up=2)
        cases.append(upfirdn_case(f"sg2 conv-up filter {2 * r}px", [batch, ch, 2 * r + 1, 2 * r + 1], padding=1,
                                  gain=4, dtypes=("float32",) if r == 4 else ("float32", "float16")))
    cases.append(upfirdn_case("sg2 upsample2d rgb 16->32px", [batch, 3, 16, 16], up=2, padding=[2, 1, 2, 1], gain=4))
    cases.append(upfirdn_case("sg2 D downsample 32->16px", [batch, ch, 32, 32], down=2, padding=1))
    cases.append(upfirdn_case("sg3 upfirdn 12-tap up2", [max(1, batch // 4), ch // 2, 36, 36], up=2,
                              padding=[6, 5, 6, 5], gain=4, taps=12))
    for r in (36, 52):
        cases.append(flrelu_case(f"sg3 filtered_lrelu {r}px", [max(1, batch // 4), ch // 2, r, r],
                                 padding=[11, 10, 11, 10], scale=100.0))
    cases.append(bias_act_case("bias_act swish 2-D (mapping)", [batch, ch], act="swish", clamp=None))
    return cases


def gradcheck_cases():
    """Small fp64 cases; `second` marks ops with a second derivative."""
    out = []
    for act in bias_act.activation_funcs:
        c = bias_act_case(f"bias_act {act}", [2, 3, 4, 4], act=act, clamp=1.5, dtypes=("float64",))
        c["second"] = bool(bias_act.activation_funcs[act].has_2nd_grad)
        out.append(c)
    for name, kw in [("up2 4x4", dict(up=2, padding=[2, 1, 2, 1], gain=4)), ("down2 4x4", dict(down=2, padding=1)),
                     ("up2 12-tap", dict(up=2, padding=6, taps=12)), ("down2 12-tap", dict(down=2, padding=5, taps=12)),
                     ("odd pad/crop", dict(up=[1, 2], down=[2, 1], padding=[3, -1, -2, 2]))]:
        c = upfirdn_case(f"upfirdn2d {name}", [1, 2, 7, 6], dtypes=("float64",), **kw)
        c["second"] = True
        out.append(c)
    out.append(dict(flrelu_case("filtered_lrelu 12-tap", [1, 2, 6, 6], padding=[11, 10, 11, 10], clamp=1.0,
                                dtypes=("float64",)), second=False))
    out.append(dict(flrelu_case("filtered_lrelu 4x4 up2", [1, 2, 5, 5], padding=2, down=1, taps=4,
                                dtypes=("float64",)), second=False))
    return out


# ----------------------------------------------------------------------------------------------

def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(case, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=gen, dtype=torch.float64) * sc).to(device=device, dtype=dtype)
            for s, sc in zip(case["shapes"], case["scale"])]


def forward_backward(run, impl, inputs, grad_out=None):
    xs = [t.detach().requires_grad_(True) for t in inputs]
    y = run(impl, *xs)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64) if grad_out is None \
        else grad_out
    grads = torch.autograd.grad(y, xs, g.to(device=y.device, dtype=y.dtype))
    return y, grads, g


# op -> paths its impl='cuda' calls took. report() holds only each op's latest call, and the
# reference runs (and filtered_lrelu's reference, which calls the other two ops) overwrite it.
CUDA_PATHS = {}


def cuda_path(op):
    path = custom_ops.report()[op]
    CUDA_PATHS.setdefault(op, set()).add(path)
    return path


def check_accuracy(case, dtype_name, device, rehearsal):
    dtype = getattr(torch, dtype_name)
    run = case["run"]
    inputs = make_inputs(case, dtype, device, seed=7)
    y, grads, g = forward_backward(run, "cuda", inputs)
    path = cuda_path(case["op"])
    # Reference in fp32 from the very same (possibly fp16-rounded) inputs.
    ref_in = [t.float() for t in inputs]
    yr, gr, _ = forward_backward(run, "ref", ref_in, g)
    errs = {"out": rel_err(y, yr)}
    for i, (a, b) in enumerate(zip(grads, gr)):
        errs[f"grad{i}"] = rel_err(a, b)
    if dtype == torch.float16:
        y16, g16, _ = forward_backward(run, "ref", inputs, g)
        ref16 = max([rel_err(y16, yr)] + [rel_err(a, b) for a, b in zip(g16, gr)])
        tol = max(2e-3, 2 * ref16)
    else:
        ref16, tol = None, 1e-5
    ok = all(math.isfinite(e) and e <= tol for e in errs.values())
    if not rehearsal and path != "cuda":
        ok = False
    return dict(case=case["name"], dtype=dtype_name, shape=case["shapes"][0], path=path, errors=errs,
                ref_fp16_error=ref16, tol=tol, ok=ok)


def check_gradients(case, device, rehearsal):
    inputs = [t.requires_grad_(True) for t in make_inputs(case, torch.float64, device, seed=11)]
    fn = lambda *xs: case["run"]("cuda", *xs)  # noqa: E731
    first = torch.autograd.gradcheck(fn, inputs, raise_exception=True)
    path = cuda_path(case["op"])
    second = torch.autograd.gradgradcheck(fn, inputs, raise_exception=True) if case.get("second") else None
    ok = bool(first) and second is not False and (rehearsal or path == "cuda")
    return dict(case=case["name"], gradcheck=bool(first), gradgradcheck=second, path=path, ok=ok)


def timed(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_case(case, dtype_name, device, warmup, repeats):
    dtype = getattr(torch, dtype_name)
    inputs = make_inputs(case, dtype, device, seed=5)
    row = dict(case=case["name"], dtype=dtype_name, shape=case["shapes"][0])
    for impl in ("ref", "cuda"):
        with torch.no_grad():
            row[f"fwd_{impl}_ms"] = timed(lambda: case["run"](impl, *inputs), device, warmup, repeats)
        xs = [t.detach().requires_grad_(True) for t in inputs]
        y0 = case["run"](impl, *xs)
        g = torch.randn_like(y0)
        del y0
        row[f"fwdbwd_{impl}_ms"] = timed(lambda: torch.autograd.grad(case["run"](impl, *xs), xs, g), device, warmup,
                                         repeats)
    row["fwd_speedup"] = row["fwd_ref_ms"] / row["fwd_cuda_ms"]
    row["fwdbwd_speedup"] = row["fwdbwd_ref_ms"] / row["fwdbwd_cuda_ms"]
    return row


def host_overhead(case, dtype_name, device, calls):
    """Host microseconds per forward call (no_grad) on a small shape, where the GPU work is
    negligible: the Python + launch overhead of each path."""
    inputs = make_inputs(case, getattr(torch, dtype_name), device, seed=5)
    row = dict(case=case["name"], dtype=dtype_name, shape=case["shapes"][0])
    for impl in ("ref", "cuda"):
        with torch.no_grad():
            for _ in range(10):
                case["run"](impl, *inputs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls):
                case["run"](impl, *inputs)
            row[f"host_{impl}_us"] = (time.perf_counter() - t0) / calls * 1e6
            if device.type == "cuda":
                torch.cuda.synchronize()
    return row


# ----------------------------------------------------------------------------------------------

def environment(device):
    env = dict(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
               device=str(device), date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2 ** 30, 1))
    home = custom_ops.find_cuda_home()
    env["cuda_home"] = home
    if home:
        try:
            env["nvcc"] = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True,
                                         text=True).stdout.strip().splitlines()[-1]
        except OSError as err:
            env["nvcc"] = f"unavailable: {err}"
    env["arch_list"] = custom_ops.default_arch_list()
    env["GAN_REFINE_OPS"] = os.environ.get("GAN_REFINE_OPS", "")
    return env


def markdown(result):
    lines = ["# CUDA ops check", ""]
    lines += [f"- {k}: {v}" for k, v in result["environment"].items()]
    lines += [f"- build: {result['build']}", f"- overall: {'PASS' if result['ok'] else 'FAIL'}"]
    if result.get("paths"):
        lines += ["- paths of the impl='cuda' calls: " + ", ".join(f"{k}: {v}" for k, v in result["paths"].items())]
    lines += ["",
              "## Accuracy (relative L2 error vs the reference path)", "",
              "| case | dtype | shape | path | out | grads | tol | ok |", "|---|---|---|---|---|---|---|---|"]
    for r in result["accuracy"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['dtype']} | | | | | | EXCEPTION |")
            continue
        grads = " ".join(f"{v:.1e}" for k, v in r["errors"].items() if k != "out")
        lines.append(f"| {r['case']} | {r['dtype']} | {r['shape']} | {r['path']} | {r['errors']['out']:.1e} | "
                     f"{grads} | {r['tol']:.0e} | {'yes' if r['ok'] else 'NO'} |")
    lines += ["", "## gradcheck (float64)", "", "| case | gradcheck | gradgradcheck | ok |", "|---|---|---|---|"]
    for r in result["gradcheck"]:
        lines.append(f"| {r['case']} | {r.get('gradcheck')} | {r.get('gradgradcheck')} | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    lines += ["", "## Timing (median ms)", "",
              "| case | dtype | shape | fwd ref | fwd cuda | x | fwd+bwd ref | fwd+bwd cuda | x |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["timing"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['dtype']} | | | | | | | EXCEPTION |")
            continue
        lines.append(f"| {r['case']} | {r['dtype']} | {r['shape']} | {r['fwd_ref_ms']:.3f} | {r['fwd_cuda_ms']:.3f} | "
                     f"{r['fwd_speedup']:.2f} | {r['fwdbwd_ref_ms']:.3f} | {r['fwdbwd_cuda_ms']:.3f} | "
                     f"{r['fwdbwd_speedup']:.2f} |")
    if result.get("overhead"):
        lines += ["", "## Host time per forward call (us, no_grad, small shapes: Python + launch overhead)", "",
                  "| case | dtype | shape | ref | cuda |", "|---|---|---|---|---|"]
        for r in result["overhead"]:
            if "error" in r:
                lines.append(f"| {r['case']} | {r['dtype']} | | | EXCEPTION |")
                continue
            lines.append(f"| {r['case']} | {r['dtype']} | {r['shape']} | {r['host_ref_us']:.1f} | "
                         f"{r['host_cuda_us']:.1f} |")
    if result.get("sg2_fwdbwd_speedup_geomean"):
        lines += ["", f"StyleGAN2 layer shapes, forward+backward speed-up (geometric mean): "
                      f"{result['sg2_fwdbwd_speedup_geomean']:.2f}x"]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-rehearsal", action="store_true", help="run on CPU, reference on both sides, tiny shapes")
    ap.add_argument("--out", default=None, help="write <out>.md and <out>.json")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats (default 20 on GPU, 3 on CPU)")
    args = ap.parse_args()
    t_start = time.time()
    rehearsal = args.cpu_rehearsal
    if not rehearsal and not torch.cuda.is_available():
        print("No CUDA device: run with --cpu-rehearsal to exercise the script on CPU.")
        return 2
    device = torch.device("cpu" if rehearsal else "cuda")
    # The reference convolutions must not run in TF32, or they, not the kernels, set the error.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    result = dict(environment=environment(device), accuracy=[], gradcheck=[], timing=[])
    print(json.dumps(result["environment"], indent=1), flush=True)

    if rehearsal:
        result["build"] = "skipped (rehearsal)"
    else:
        t0 = time.time()
        try:
            mods = _cuda.build_all()
        except Exception:  # noqa: BLE001
            print("BUILD FAILED\n" + traceback.format_exc(), flush=True)
            return 2
        result["build"] = f"ok in {time.time() - t0:.1f} s: " + ", ".join(m.__file__ for m in mods.values())
    print("build:", result["build"], flush=True)

    cases = full_cases(batch=2, ch=4) if rehearsal else full_cases()
    print(f"\n== accuracy ({time.time() - t_start:.0f} s) ==", flush=True)
    for case in cases:
        for dt in case["dtypes"]:
            try:
                r = check_accuracy(case, dt, device, rehearsal)
            except Exception:  # noqa: BLE001
                r = dict(case=case["name"], dtype=dt, ok=False, error=traceback.format_exc())
            result["accuracy"].append(r)
            print(json.dumps({k: v for k, v in r.items()}, default=str), flush=True)

    print(f"\n== gradcheck, float64 ({time.time() - t_start:.0f} s) ==", flush=True)
    for case in gradcheck_cases():
        try:
            r = check_gradients(case, device, rehearsal)
        except Exception:  # noqa: BLE001
            r = dict(case=case["name"], ok=False, error=traceback.format_exc())
        result["gradcheck"].append(r)
        print(json.dumps(r, default=str), flush=True)

    print(f"\n== timing ({time.time() - t_start:.0f} s) ==", flush=True)
    repeats = args.repeats or (2 if rehearsal else 20)
    for case in cases:
        for dt in case["dtypes"]:
            try:
                r = time_case(case, dt, device, warmup=1 if rehearsal else 3, repeats=repeats)
            except Exception:  # noqa: BLE001
                r = dict(case=case["name"], dtype=dt, error=traceback.format_exc())
            result["timing"].append(r)
            print(json.dumps(r, default=str), flush=True)
    result["overhead"] = []
    small = [bias_act_case("bias_act lrelu", [4, 32, 4, 4]),
             upfirdn_case("upfirdn2d up2 4x4", [4, 32, 8, 8], up=2, padding=[2, 1, 2, 1], gain=4),
             flrelu_case("filtered_lrelu 12-tap", [4, 32, 12, 12], padding=[11, 10, 11, 10])]
    print(f"\n== host overhead ({time.time() - t_start:.0f} s) ==", flush=True)
    for case in small:
        try:
            r = host_overhead(case, "float32", device, calls=20 if rehearsal else 200)
        except Exception:  # noqa: BLE001
            r = dict(case=case["name"], dtype="float32", error=traceback.format_exc())
        result["overhead"].append(r)
        print(json.dumps(r, default=str), flush=True)
    sg2 = [r["fwdbwd_speedup"] for r in result["timing"] if r["case"].startswith("sg2") and "error" not in r]
    if sg2:
        result["sg2_fwdbwd_speedup_geomean"] = float(np.exp(np.mean(np.log(sg2))))

    failures = [r for r in result["accuracy"] + result["gradcheck"] if not r["ok"]]
    result["ok"] = not failures
    result["seconds"] = round(time.time() - t_start, 1)
    result["paths"] = {op: " | ".join(sorted(CUDA_PATHS.get(op, {"unused"}))) for op in custom_ops.OPS}
    md = markdown(result)
    print("\n" + md)
    for r in failures:
        print("FAILED:", json.dumps(r, default=str, indent=1))
    if args.out:
        base = os.path.splitext(args.out)[0] if args.out.endswith((".md", ".json")) else args.out
        atomic_write_text(base + ".md", md)
        atomic_write_text(base + ".json", json.dumps(result, indent=1, default=str))
        print(f"wrote {base}.md and {base}.json")
    print(f"{'PASS' if result['ok'] else 'FAIL'} in {result['seconds']} s (paths of the impl='cuda' calls: "
          f"{result['paths']})")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
