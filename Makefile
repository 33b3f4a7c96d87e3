# omnifast: `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS_STAMP := $(VENV)/.omnifast-deps
EXT_STAMP := $(VENV)/.omnifast-ext
RAY_STAMP := $(VENV)/.omnifast-ray
EXT_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null) \
	setup.py pyproject.toml omnifast/_build_config.py
PYTEST_ARGS ?=

.PHONY: install ext test test-slow test-restricted-isa fuzz demo bench clean lint check-sm90 check-triton36 help

help:
	@echo "make install   create .venv, install pinned dependencies and Ray, build omnifast._C"
	@echo "make test      install, then run the test suite (op parity also with AVX2-only math libraries)"
	@echo "make test-slow the slow end-to-end tests that make test leaves out (faster tests cover their code)"
	@echo "make fuzz      CPU op parity over many random cases (OMNIFAST_FUZZ_CASES, default 200)"
	@echo "make demo      install, then fit a generated clip and write the pictures"
	@echo "make bench     install, then run the benchmark suites"
	@echo "make check-sm90  compile the GPU kernels for sm_90 (no GPU needed) and report"
	@echo "make check-triton36  the same Triton checks and interpreter tests with triton 3.6"
	@echo "make lint      ruff"

$(DEPS_STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77.0.3" wheel
	$(PIP) install -q -r requirements-dev.txt
	@touch $@

# Editable install without build isolation: compiles omnifast._C against the venv's torch.
$(EXT_STAMP): $(DEPS_STAMP) $(EXT_SOURCES)
	flock .build.lock $(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $@

# Ray (`omnifast fit-many`, an optional extra for users) on its own line: a change to it does not
# rebuild the extension.
$(RAY_STAMP): $(DEPS_STAMP) requirements-ray.txt
	$(PIP) install -q -r requirements-ray.txt
	@touch $@

install: $(EXT_STAMP) $(RAY_STAMP)

# Rebuild only the extension, in place (serialised by a lock so parallel builds don't collide).
ext: $(DEPS_STAMP)
	flock .build.lock $(PY) setup.py -q build_ext --inplace
	@touch $(EXT_STAMP)

test: install check-sm90
	$(PY) -m pytest -q tests -m "not slow" $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-restricted-isa

# End-to-end tests left out of `make test`: a faster test covers the code each one runs.
test-slow: install
	$(PY) -m pytest -q tests -m slow $(PYTEST_ARGS)

# Rounding in torch's matrix products follows the code path oneMKL and oneDNN pick for the CPU:
# the op parity tests run again with both held to AVX2, as on a CPU without AVX-512.
RESTRICTED_ISA := MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
PARITY_TESTS := tests/test_bijection.py tests/test_affine.py tests/test_gabor.py \
	tests/test_composite.py tests/test_fuzz_parity.py
test-restricted-isa: install
	$(RESTRICTED_ISA) $(PY) -m pytest -q $(PARITY_TESTS) -m "not slow" $(PYTEST_ARGS)

fuzz: install
	OMNIFAST_FUZZ_CASES=$${OMNIFAST_FUZZ_CASES:-200} $(PY) -m pytest -q tests/test_fuzz_parity.py

# Compile every Triton kernel (as launched) and every CUDA source for the H100, no GPU needed.
check-sm90: install
	$(PY) scripts/check_sm90.py

# The GPU machines run triton 3.6: compile for sm_90 and run the interpreter tests with it.
check-triton36: install
	scripts/check_triton_version.sh 3.6.0

# import omnifast sets OMP_WAIT_POLICY=PASSIVE itself (omnifast.runtime)
demo: install
	$(PY) -m omnifast.demo

bench: install
	$(PY) -m pytest benchmarks --benchmark-only -q

lint: $(DEPS_STAMP)
	$(VENV)/bin/ruff check omnifast kernels tests benchmarks

clean:
	rm -rf build dist *.egg-info omnifast/_C*.so .pytest_cache .benchmarks
