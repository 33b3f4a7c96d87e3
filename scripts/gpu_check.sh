#!/usr/bin/env bash
# Everything a GPU machine can tell us, in 8 minutes: preflight, build, GPU parity tests, the
# training-step benchmark, the networks' tensor-core kernels, the op benchmarks, compute-sanitizer.
#
#   scripts/gpu_check.sh OUT_DIR
#
# Expects a Python with a CUDA build of torch, triton, pytest and pytest-benchmark installed
# (PYTHON, default python3) and needs no network: omnifast._C is built in place against that
# torch, with no build isolation and no downloads (seen: torch 2.11 + CUDA 13, triton 3.6,
# Python 3.12). The preflight fails fast, with the reason, when the machine cannot build or run
# the GPU code. The stages run in order of value, each under its own `timeout`, inside one
# overall budget (GPU_CHECK_BUDGET seconds, default 470): a stage that would not fit is skipped
# and says so. Everything lands in OUT_DIR: env.txt, summary.txt, one log per stage,
# step_bench.{json,md}, net_bench.{json,md}, op_bench.json, and bundle.tar.gz with all of it (one
# file to bring back).
#
# On the lent GPU machine (at most 8 files come back from $OUT):
#   scripts/gpu_check.sh /tmp/gc; cp /tmp/gc/{summary.txt,step_bench.md,bundle.tar.gz} $OUT/
#
# GPU_CHECK_DRY_RUN=1 runs the same control flow on a CPU with stand-in commands (the CI test
# tests/test_train_step.py::test_gpu_check_dry_run_on_the_cpu).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 1 ]; then echo "usage: scripts/gpu_check.sh OUT_DIR" >&2; exit 2; fi
PY=${PYTHON:-python3}
OUT=$1
DRY=${GPU_CHECK_DRY_RUN:-0}
BUDGET=${GPU_CHECK_BUDGET:-470}
mkdir -p "$OUT"
: >"$OUT/summary.txt"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
[ "$DRY" = 1 ] || unset TRITON_INTERPRET
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
NPROC=$(nproc 2>/dev/null || echo 4)
T0=$SECONDS
status=0

summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
left() { echo $((BUDGET - (SECONDS - T0))); }
stage() {  # stage NAME SECONDS CMD...: run under timeout (capped by the budget left), log it
  local name=$1 limit=$2; shift 2
  local rest; rest=$(left)
  [ "$limit" -gt "$((rest - 5))" ] && limit=$((rest - 5))
  if [ "$limit" -lt 10 ]; then summary "SKIP  $name: the budget is spent"; return 1; fi
  local t=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then summary "PASS  $name ($((SECONDS - t)) s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    summary "FAIL  $name: timed out after $limit s (see $name.log)"; status=1
  else summary "FAIL  $name ($((SECONDS - t)) s, exit $rc): see $name.log"; status=1; fi
  return $rc
}
fatal() { summary "FAIL  preflight: $*"; bundle; exit 2; }
bundle() { tar -czf "$OUT/bundle.tar.gz" -C "$OUT" --exclude bundle.tar.gz . 2>/dev/null || true; }

# ------------------------------------------------------------------ environment
{
  echo "date: $(date -u)"; echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "cores: $NPROC, dry run: $DRY, budget: $BUDGET s"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
    --format=csv 2>&1 || true
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1
  "$PY" -c "import numpy; print('numpy', numpy.__version__)"
  command -v nvcc >/dev/null && nvcc --version | tail -2
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# ------------------------------------------------------------------ 0. preflight (fails fast)
preflight() {  # prints one line per check; exit status 1 if a required one fails
  "$PY" - "$DRY" <<'EOF'
import importlib, re, shutil, subprocess, sys
dry = sys.argv[1] == "1"
bad = []
def check(ok, what, why):
    print(("ok    " if ok else ("note  " if dry else "FAIL  ")) + what + ("" if ok else f": {why}"))
    if not ok and not dry:
        bad.append(what)
import torch
check(torch.cuda.is_available(), "CUDA device visible to torch",
      f"torch {torch.__version__} sees no GPU (CUDA build: {torch.version.cuda})")
nvcc = shutil.which("nvcc")
tv = torch.version.cuda
if nvcc:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    nv = f"{m.group(1)}.{m.group(2)}" if m else "?"
    check(tv is not None and nv.split(".")[0] == tv.split(".")[0],
          f"nvcc {nv} matches torch's CUDA {tv} (major version)",
          "the extension's CUDA code would not build or load against this torch")
    if tv and nv != tv:
        print(f"note  nvcc {nv} and torch's CUDA {tv} differ in the minor version")
else:
    check(False, "nvcc on PATH", "no CUDA compiler: the CUDA kernels cannot be built")
from torch.utils.cpp_extension import is_ninja_available
check(is_ninja_available(), "ninja", "pip install ninja (parallel builds need it)")
try:
    import setuptools
    v = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
    check(v >= (64, 0), f"setuptools {setuptools.__version__}", "setuptools >= 64 is needed")
except ImportError:
    check(False, "setuptools", "not installed")
for mod in ("triton", "pytest", "pytest_benchmark", "numpy", "tqdm"):
    try:
        importlib.import_module(mod)
        check(True, mod, "")
    except ImportError as exc:
        check(mod == "triton" and dry, mod, f"not importable ({exc})")
sys.exit(1 if bad else 0)
EOF
}
if ! preflight >"$OUT/preflight.log" 2>&1; then
  cat "$OUT/preflight.log"; fatal "$(grep '^FAIL' "$OUT/preflight.log" | tr '\n' ';')"
fi
summary "PASS  preflight ($((SECONDS - T0)) s)"

# ------------------------------------------------------------------ 1. build, all cores
if [ "$DRY" = 1 ]; then
  stage build 60 "$PY" -c "import omnifast._C as C; print(C.build_info())"
else
  stage build 200 env MAX_JOBS="$NPROC" "$PY" setup.py build_ext --inplace
fi
has_cuda=0
if "$PY" -c "import sys, omnifast._C as C; print(C.build_info()); sys.exit(0 if C.has_cuda() else 1)" \
    >>"$OUT/build.log" 2>&1; then has_cuda=1
elif [ "$DRY" = 1 ]; then summary "NOTE  build: no CUDA kernels in omnifast._C (expected on a CPU)"
else summary "FAIL  build: omnifast._C has no CUDA kernels (see build.log); the reference step is still measured"; status=1
fi

# ------------------------------------------------------------------ 2. GPU parity tests
if [ "$DRY" = 1 ]; then
  stage parity 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_train_step.py -k "step_mode_switch"
else
  # the training step's eager-vs-graph parity first, then the kernels' parity grids
  stage parity 100 "$PY" -m pytest -q -p no:cacheprovider --maxfail=20 --durations=10 \
    tests/test_train_step.py tests/test_composite.py tests/test_bijection.py \
    tests/test_gabor.py tests/test_affine.py tests/test_dispatch.py tests/test_triton_mlp.py \
    -k "(cuda or triton or gpu or graph or network or mlp) and not dry_run"
fi

# ------------------------------------------------------------------ 3. the training step
if [ "$DRY" = 1 ]; then
  stage step_bench 120 "$PY" benchmarks/bench_train_step.py --size small --providers ref_eager \
    --precisions fp32 --steps 1 --rounds 1 --warmup 1 --profile-steps 1 \
    --json "$OUT/step_bench.json" --md "$OUT/step_bench.md"
else
  stage step_bench 150 "$PY" benchmarks/bench_train_step.py --size paper --budget 110 \
    --json "$OUT/step_bench.json" --md "$OUT/step_bench.md"
fi

# ------------------------------------------------------------------ 4. the networks' kernels
# each network at 65,536 samples, without the compiled reference (its compile costs minutes)
if [ "$DRY" = 1 ]; then
  stage net_bench 60 "$PY" -m pytest -q -p no:cacheprovider --collect-only \
    benchmarks/bench_networks.py
else
  stage net_bench 150 "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_networks.py \
    --benchmark-only -k "not ref_compile" --benchmark-json="$OUT/net_bench.json" \
    --benchmark-columns=min,median,rounds
  [ -f "$OUT/net_bench.json" ] && "$PY" scripts/bench_table.py "$OUT/net_bench.json" \
    >"$OUT/net_bench.md" 2>&1
fi

# ------------------------------------------------------------------ 5. op benchmarks
if [ "$DRY" = 1 ]; then
  stage op_bench 60 "$PY" -m pytest -q -p no:cacheprovider --collect-only \
    benchmarks/bench_composite.py benchmarks/bench_bijection.py
elif [ $has_cuda = 1 ]; then
  stage op_bench 60 "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_composite.py \
    benchmarks/bench_bijection.py -k "not ref_compile" --benchmark-only --benchmark-max-time=0.2 \
    --benchmark-json="$OUT/op_bench.json" --benchmark-columns=median,rounds
else
  summary "SKIP  op_bench: no CUDA kernels built"
fi

# ------------------------------------------------------------------ 6. compute-sanitizer, last
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ "$DRY" = 1 ]; then
  stage sanitizer 30 echo "dry run: would run ${SAN:-compute-sanitizer} --tool memcheck on the CUDA kernels' tests"
elif [ -z "$SAN" ]; then
  summary "SKIP  sanitizer: compute-sanitizer not found"
elif [ $has_cuda = 1 ]; then
  stage sanitizer 60 "$SAN" --tool memcheck --error-exitcode 1 --target-processes all \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_composite.py -k "cuda"
else
  summary "SKIP  sanitizer: no CUDA kernels built"
fi

summary "total $((SECONDS - T0)) s; results in $OUT"
bundle
exit $status
