#!/usr/bin/env bash
# The tensor-core MLP kernels on a GPU machine, time-boxed to about 8 minutes: the parity tests on
# CUDA, then the network benchmarks (without the compiled reference, then the compiled reference
# on the coupling stack's backward only: each torch.compile costs tens of seconds).
#
#   scripts/gpu_check_networks.sh [OUT_DIR]      (after `make install`)
#
# Writes OUT_DIR (default gpu_check_out/networks-<date>): tests.log, bench.json / bench.md,
# compile.json / compile.md and summary.txt. Each stage has its own time limit and a failed
# stage does not stop the next one.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-gpu_check_out/networks-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export TRITON_DEFAULT_FP_FUSION=1
: >"$OUT/summary.txt"

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc ($((SECONDS - t0)) s)" | tee -a "$OUT/summary.txt"
}

"$PY" -c "import torch, triton; print(torch.__version__, triton.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee -a "$OUT/summary.txt"
stage tests 180 "$PY" -m pytest -q -p no:cacheprovider tests/test_triton_mlp.py \
  tests/test_bijection.py -k "triton"
stage bench 200 "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_networks.py \
  --benchmark-only -k "not ref_compile" --benchmark-json="$OUT/bench.json" \
  --benchmark-columns=min,median,rounds
stage compile 120 "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_networks.py \
  --benchmark-only -k "coupling-bwd and (ref_ or triton_bf16)" \
  --benchmark-json="$OUT/compile.json" --benchmark-columns=min,median,rounds
for j in bench compile; do
  [ -f "$OUT/$j.json" ] && "$PY" scripts/bench_table.py "$OUT/$j.json" >"$OUT/$j.md" 2>&1
done
cat "$OUT/summary.txt"
