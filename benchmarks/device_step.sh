#!/usr/bin/env bash
# The one device call for step speed: benchmarks/step_speed.py on the GPU only (gradient checks,
# speed tables of both pairs, batch and memory tables, then the compiled variants with and
# without CUDA graphs). Results land in $OUT; run from the repository root.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TORCH_EXTENSIONS_DIR="$(mktemp -d)" MAX_JOBS=16
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/device.txt"
lscpu | grep "Model name" | tee -a "$OUT/device.txt"
timeout "${STEP_SPEED_LIMIT:-520}" python3 benchmarks/step_speed.py --cuda-only --repeats 30 \
    --batches 8,16,32,64,128,256 --compile-modes reduce-overhead,default --cuda-budget "${CUDA_BUDGET:-300}" \
    --out "$OUT/step_speed_cuda" 2>&1 | tee "$OUT/step_speed_cuda.log"
rc=${PIPESTATUS[0]}
echo "step_speed exit: $rc"
exit $rc
