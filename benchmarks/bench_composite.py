"""Benchmarks of ``composite``: providers x modes x named shapes (benchmarks/shapes.py COMPOSITE).

Providers: the reference eager, the reference under ``torch.compile``, and each fused backend
that can run here (C++ CPU; Triton and CUDA on a GPU). Modes: ``fwd`` (forward that keeps the
autograd graph), ``bwd`` (backward alone; the forward runs in the untimed setup), ``fwdbwd``;
the inference shape runs ``fwd`` only, under ``no_grad`` (fused providers skip the weights).

Each record's ``extra_info`` holds rays/s and two memory figures of one call:

* ``peak_extra_MB``: the peak of the memory allocated through ATen during the call, beyond
  what was live before (the inputs); it includes the tensors the call returns (from the
  profiler's allocation events on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU);
* ``workspace_MB``: that peak minus the bytes of the tensors the call returns (outputs and
  weights in ``fwd``, the gradients in ``bwd`` and ``fwdbwd``): the temporary memory of the
  call, including what an autograd graph keeps for the backward.

The ``ref_compile`` provider compiles ``composite_ref`` once per shape and mode
(``dynamic=False``), in the untimed setup; ``extra_info["compiles_in_timing"]`` counts the
frames Dynamo compiled during the timed rounds and the memory measurement (0 when the timings
are of compiled code only). The training shape's cases time as many rounds as fill
``OMNIFAST_BENCH_SECONDS`` (default 3) seconds, 8 to 1000, for every provider alike.

    flock /tmp/omnifast-bench.lock .venv/bin/python -m pytest benchmarks/bench_composite.py \
        --benchmark-only --benchmark-columns=min,median,mean,rounds -q
"""

from __future__ import annotations

import math
import os
import time

import pytest
import torch
import torch._dynamo
from memory import peak_and_workspace_bytes
from shapes import COMPOSITE

import omnifast
from omnifast.dispatch import available_backends
from omnifast.ops.composite import composite
from omnifast.reference.composite import composite_ref

_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Timed rounds of a training-shape case: as many as fill OMNIFAST_BENCH_SECONDS (default 3 s)
# of calls, at least 8 and at most 1000, for every provider alike. On the 2-core machines the
# memory bandwidth halves in phases of 0.25-2 s (benchmarks/RESULTS.md); 8 rounds of a 7 ms
# call fell inside one such phase as often as not, while a few seconds of rounds give every
# provider the same chance of a quiet stretch, so that the minima compare like with like.
_BENCH_SECONDS = float(os.environ.get("OMNIFAST_BENCH_SECONDS", "3"))


def _train_rounds(call) -> int:
    t0 = time.perf_counter()
    call()
    once = max(time.perf_counter() - t0, 1e-6)
    return int(min(1000, max(8, math.ceil(_BENCH_SECONDS / once))))


def _fused_ok(name: str) -> bool:
    if name == "triton" and _DEVICE == "cpu":
        return False  # the interpreter is a correctness tool, not a benchmark provider
    return available_backends("composite", _DEVICE)[name] is None


PROVIDERS = ["ref_eager", "ref_compile"] + [p for p in ("cpu", "triton", "cuda") if _fused_ok(p)]
CASES = [(shape, mode) for shape in ("train_65k",) for mode in ("fwd", "bwd", "fwdbwd")]
CASES += [("infer_1m", "fwd")]

# One compiled callable per (shape, mode): each is compiled once in the untimed setup. Every
# variant (shape, requires_grad, grad mode) is a separate cache entry of composite_ref's code
# object, so the limit on entries is raised above the number of variants this suite creates.
_dynamo_cfg = torch._dynamo.config
for _limit in ("cache_size_limit", "recompile_limit"):
    if hasattr(_dynamo_cfg, _limit):
        setattr(_dynamo_cfg, _limit, max(getattr(_dynamo_cfg, _limit), 64))
_compiled = {}


def _ref_fn(provider: str, key=None):
    if provider == "ref_eager":
        return composite_ref
    if key not in _compiled:
        _compiled[key] = torch.compile(composite_ref, dynamic=False)
    return _compiled[key]


def _dynamo_frames() -> int:
    return int(torch._dynamo.utils.counters["frames"]["total"])


def _call(provider: str, sigma, values, need_weights=True, key=None):
    if provider.startswith("ref_"):
        return _ref_fn(provider, key)(sigma, values)
    with omnifast.backend(provider):
        return composite(sigma, values, need_weights=need_weights)


def _sync():
    if _DEVICE == "cuda":
        torch.cuda.synchronize()


def _memory(fn) -> tuple[int, int]:
    return peak_and_workspace_bytes(fn, _DEVICE)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape_name,mode", CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_composite(benchmark, provider, shape_name, mode):
    shape = COMPOSITE[shape_name]
    R, K, C = shape.rays, shape.samples, shape.channels
    g = torch.Generator().manual_seed(0)
    sigma = (torch.rand(R, K, generator=g) * 0.5).to(_DEVICE)
    values = torch.randn(R, K, C, generator=g).to(_DEVICE)
    dout = torch.randn(R, C, generator=g).to(_DEVICE)
    dweights = torch.randn(R, K, generator=g).to(_DEVICE)
    infer = shape_name.startswith("infer")

    s_leaf = sigma.clone().requires_grad_(True)
    v_leaf = values.clone().requires_grad_(True)
    key = (shape_name, mode)

    def fwd_graph():
        return _call(provider, s_leaf, v_leaf, key=key)

    def backward(out, w):
        grads = torch.autograd.grad([out, w], [s_leaf, v_leaf], [dout, dweights])
        _sync()
        return grads

    # correctness once, outside the timed region (on a slice for the inference shape)
    n = 4096 if infer else R
    s_chk, v_chk = sigma[:n].clone().requires_grad_(True), values[:n].clone().requires_grad_(True)
    out, w = _call(provider, s_chk, v_chk, key=key + ("check",))
    out_r, w_r = composite_ref(sigma[:n], values[:n])
    torch.testing.assert_close(out, out_r, rtol=1e-4, atol=1e-5)
    if not infer:
        torch.autograd.backward([out, w], [dout[:n], dweights[:n]])
        s_r, v_r = sigma.clone().requires_grad_(True), values.clone().requires_grad_(True)
        out_r, w_r = composite_ref(s_r, v_r)
        torch.autograd.backward([out_r, w_r], [dout, dweights])
        torch.testing.assert_close(s_chk.grad, s_r.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(v_chk.grad, v_r.grad, rtol=1e-4, atol=1e-5)
    del out, w, out_r, w_r, s_chk, v_chk

    if infer:
        def run():
            with torch.no_grad():
                res = _call(provider, sigma, values, need_weights=False, key=key)
            _sync()
            return res

        run()  # warm-up (compiles the torch.compile provider)
        frames = _dynamo_frames()
        peak, workspace = _memory(run)
        benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    elif mode == "fwd":
        def run():
            res = fwd_graph()
            _sync()
            return res

        backward(*fwd_graph())  # warm-up (compiles forward and backward)
        frames = _dynamo_frames()
        peak, workspace = _memory(run)
        benchmark.pedantic(run, rounds=_train_rounds(run), warmup_rounds=1)
    elif mode == "bwd":
        def setup():
            out, w = fwd_graph()
            _sync()
            return (out, w), {}

        backward(*fwd_graph())
        frames = _dynamo_frames()
        args, _ = setup()
        peak, workspace = _memory(lambda: backward(*args))
        args, _ = setup()
        rounds = _train_rounds(lambda: backward(*args))
        del args
        benchmark.pedantic(backward, setup=setup, rounds=rounds, warmup_rounds=1)
    else:
        def run():
            return backward(*fwd_graph())

        run()
        frames = _dynamo_frames()
        peak, workspace = _memory(run)
        benchmark.pedantic(run, rounds=_train_rounds(run), warmup_rounds=1)

    benchmark.extra_info.update({
        "shape": f"R={R} K={K} C={C}", "mode": mode, "provider": provider,
        "rays_per_s": R / benchmark.stats.stats.min if benchmark.stats else None,
        "peak_extra_MB": round(peak / 2**20, 1),
        "workspace_MB": round(workspace / 2**20, 1),
        "compiles_in_timing": _dynamo_frames() - frames,
    })
