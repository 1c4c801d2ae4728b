#!/usr/bin/env bash
# The one device call for the CUDA ops: build, check against the reference, time, then the
# GPU tests of tests/test_cuda_ops.py and whole-generator timings. Results land in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TORCH_EXTENSIONS_DIR="$(mktemp -d)" MAX_JOBS=16
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/device.txt"
python3 benchmarks/gpu_check.py --out "$OUT/gpu_check" 2>&1 | tee "$OUT/gpu_check.log"; rc1=${PIPESTATUS[0]}
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_ops.py 2>&1 | tail -25 | tee "$OUT/pytest_cuda.log"
timeout 150 python3 benchmarks/gpu_generator.py --out "$OUT/gpu_generator" 2>&1 | tail -12 | tee "$OUT/gpu_generator.log"
echo "gpu_check exit: $rc1"
exit $rc1
