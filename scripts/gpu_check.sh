#!/usr/bin/env bash
# One command for a GPU machine: build, GPU parity tests, compute-sanitizer, benchmarks.
#
#   scripts/gpu_check.sh [OUT_DIR]
#
# Expects a Python with a CUDA build of torch and triton already installed (PYTHON, default
# python3) and needs no network: the extension is built in place against that torch, with no
# build isolation and no downloads. Works with the pinned versions and with other recent ones
# (seen: torch 2.11 + CUDA 13, triton 3.6, Python 3.12). Everything goes to OUT_DIR (default
# gpu_check_out/<date>): one log per stage, the benchmark JSON, and summary.txt.
# GPU_CHECK_ON_CPU=1 runs the same stages without a GPU (to check the script itself); BENCH_K
# selects benchmarks with a pytest -k expression.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-gpu_check_out/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
status=0
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
stage() {  # stage NAME CMD...: run, log to OUT/NAME.log, record pass/fail
  local name=$1; shift
  local t0=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then summary "PASS  $name ($((SECONDS - t0)) s)";
  else summary "FAIL  $name ($((SECONDS - t0)) s): see $name.log"; status=1; fi
}

{
  echo "date: $(date -u)"; echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1
  "$PY" -c "import numpy; print('numpy', numpy.__version__)"
  command -v nvcc && nvcc --version | tail -1
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [ "${GPU_CHECK_ON_CPU:-0}" = 1 ]; then
    summary "NOTE  no CUDA device: GPU_CHECK_ON_CPU=1 runs every stage on the CPU (a dry run)"
  else
    summary "FAIL  no CUDA device visible to torch"; exit 1
  fi
fi

# 1. build omnifast._C (C++ and CUDA) against the local torch, in place, offline
stage build "$PY" setup.py build_ext --inplace
"$PY" -c "import omnifast._C as C; print(C.build_info())" >>"$OUT/build.log" 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# 2. the whole test suite on the GPU machine (Triton and CUDA backends run on the GPU here)
stage tests "$PY" -m pytest -q -x tests -p no:cacheprovider --durations=15

# 3. compute-sanitizer over the CUDA kernels' tests
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$SAN" ]; then
  stage sanitizer "$SAN" --tool memcheck --error-exitcode 1 --target-processes all \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_composite.py tests/test_bijection.py -k "cuda"
else
  summary "SKIP  sanitizer: compute-sanitizer not found"
fi

# 4. benchmarks: each op and the training step, reference eager vs fused, peak memory
# BENCH_K: an optional pytest -k expression that selects a subset of the benchmarks
stage benchmarks "$PY" -m pytest -q -p no:cacheprovider benchmarks --benchmark-only \
  --benchmark-json="$OUT/benchmarks.json" --benchmark-columns=median,iqr,rounds \
  ${BENCH_K:+-k "$BENCH_K"}
"$PY" scripts/bench_table.py "$OUT/benchmarks.json" >"$OUT/benchmarks.md" 2>&1 || true

summary "results in $OUT"
exit $status
