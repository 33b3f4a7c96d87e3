#!/usr/bin/env bash
# Check the Triton kernels against another Triton release than the pinned one, without a GPU.
#
#   scripts/check_triton_version.sh [VERSION]      (default 3.6.0, what the GPU machines run)
#
# Installs that triton (no dependencies) into .triton-<VERSION>/ beside the venv, then, with it
# first on the path: compiles every Triton kernel for sm_90 (scripts/check_sm90.py --only triton)
# and runs the kernels' parity tests under the interpreter (TRITON_INTERPRET=1, CPU tensors).
# Its own Triton cache keeps the two versions' compiled kernels apart.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-3.6.0}
PY=${PYTHON:-.venv/bin/python}
DIR=.triton-$VERSION
if [ ! -d "$DIR/triton" ]; then
  "$PY" -m pip install -q --no-deps --target "$DIR" "triton==$VERSION"
fi
# triton 3.6's interpreter cannot run a loop with a runtime bound under numpy >= 2.4 ("only
# 0-dimensional arrays can be converted to Python scalars"): give it numpy < 2.4 beside it.
if [ ! -d "$DIR/numpy" ]; then
  "$PY" -m pip install -q --no-deps --target "$DIR" "numpy<2.4"
fi
export PYTHONPATH="$PWD/$DIR${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_CACHE_DIR="$PWD/$DIR/cache"
"$PY" -c "import triton, sys; v = triton.__version__; print('triton', v); sys.exit(v != '$VERSION')"
"$PY" scripts/check_sm90.py --only triton
"$PY" -m pytest -q -p no:cacheprovider tests/test_composite.py tests/test_bijection.py \
  tests/test_triton_mlp.py -k triton
