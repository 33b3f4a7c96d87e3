"""Benchmarks of ``coupling_stack``: providers x modes x named shapes (shapes.BIJECTION).

Providers: the reference eager in fp32 and in bf16 (``omnifast.matmul_precision("bf16")``),
the fused C++ CPU kernels in fp32 and bf16, and Triton on a GPU. Modes:

* ``fwd`` / ``inv``: the stack forward / inverse under ``no_grad``;
* ``fwdinv_bwd``: forward, then inverse of the result, then backward of both with a random
  upstream gradient (the training pattern: T_i then T_j^-1).

Widths are the omnimotion preset's (6 layers, code 128, PE 4 frequencies -> projection 256,
hidden 256 x 3). Each record's ``extra_info`` has:

* ``gflops_real``: matrix-product FLOPs the provider actually executes per second (reference:
  1,406,976 MAC/point/direction; fused: 1,210,368 with the code term hoisted; the fused
  backward recomputes the forward except for the ``save_hidden`` top activations per layer the
  CPU kernels keep (``omnifast.ops.bijection.CPU_SAVE_HIDDEN``, each one 65,536 MAC/point/layer
  less), so fwdinv_bwd counts 3 passes plus that recompute for fused and 3 for the reference);
* ``gflops_ref_equiv``: the reference's FLOP count divided by this provider's time (the same
  work for every provider, so these are directly comparable);
* ``machine_matmul_gflops``: the fp32 / bf16 rate of a 65536x256 @ 256x256 product measured in
  the same process;
* ``peak_extra_MB``: peak memory allocated through ATen during one call beyond the inputs
  (profiler allocation events on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU), and
  ``saved_MB``: what autograd keeps between forward and backward.

    flock /tmp/omnifast-bench.lock .venv/bin/python -m pytest benchmarks/bench_bijection.py \
        --benchmark-only --benchmark-columns=min,median,rounds -q
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from memory import peak_extra_bytes
from shapes import BIJECTION

import omnifast
from omnifast.config import get_preset
from omnifast.dispatch import available_backends
from omnifast.ops.bijection import coupling_stack
from omnifast.reference.bijection import CouplingParams

_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
COORDS = (1, 0, 2, 1, 0, 2)


def _fused_ok(name: str) -> bool:
    if name == "triton" and _DEVICE == "cpu":
        return False  # the interpreter is a correctness tool, not a benchmark provider
    return available_backends("coupling_stack", _DEVICE)[name] is None


PROVIDERS = ["ref_fp32", "ref_bf16"]
PROVIDERS += [f"{b}_{p}" for b in ("cpu", "triton") if _fused_ok(b) for p in ("fp32", "bf16")]
CASES = [(s, m) for s in ("omnimotion_8k", "omnimotion_65k") for m in ("fwd", "inv",
                                                                       "fwdinv_bwd")]


def _sync():
    if _DEVICE == "cuda":
        torch.cuda.synchronize()


_RATE: dict[str, float] = {}


def machine_matmul_gflops(dtype: torch.dtype) -> float:
    """Best of 5: 65536x256 @ 256x256 in ``dtype`` (the rate the benchmark notes compare to)."""
    key = str(dtype)
    if key not in _RATE:
        a = torch.randn(65536, 256, device=_DEVICE).to(dtype)
        b = torch.randn(256, 256, device=_DEVICE).to(dtype)
        a @ b
        best = math.inf
        for _ in range(5):
            _sync()
            t0 = time.perf_counter()
            a @ b
            _sync()
            best = min(best, time.perf_counter() - t0)
        _RATE[key] = 2 * 65536 * 256 * 256 / best / 1e9
    return _RATE[key]


def make_problem(points: int, preset: str, frames: int, seed: int = 0):
    cfg = get_preset(preset).model
    L, C, P, H = cfg.num_coupling, cfg.code_dim, cfg.proj_dim, cfg.coupling_hidden[0]
    NH = len(cfg.coupling_hidden) - 1
    E = 2 + 4 * cfg.pe_freq
    g = torch.Generator().manual_seed(seed)

    def u(*shape, fan_in):
        w = (torch.rand(*shape, generator=g) * 2 - 1) / math.sqrt(fan_in)
        return w.to(_DEVICE).requires_grad_()

    params = CouplingParams(
        proj_w=u(L, P, E, fan_in=E), proj_b=u(L, P, fan_in=E),
        w_in=u(L, H, C + P, fan_in=C + P), b_in=u(L, H, fan_in=C + P),
        w_hidden=tuple(u(L, H, H, fan_in=H) for _ in range(NH)),
        b_hidden=tuple(u(L, H, fan_in=H) for _ in range(NH)),
        w_out=u(L, 2, H, fan_in=H), b_out=u(L, 2, fan_in=H))
    x = (torch.rand(points, 3, generator=g) * 2 - 1).to(_DEVICE).requires_grad_()
    frame_idx = torch.randint(0, frames, (points,), generator=g).to(_DEVICE)
    codes = torch.randn(frames, L, C, generator=g).to(_DEVICE).requires_grad_()
    dims = dict(L=L, C=C, P=P, H=H, NH=NH, E=E, n_freq=cfg.pe_freq)
    return x, frame_idx, codes, params, dims


def mac_per_point(d: dict, hoisted: bool) -> int:
    """Matrix-product MACs of one point through the stack in one direction."""
    first = d["P"] * d["H"] if hoisted else (d["C"] + d["P"]) * d["H"]
    return d["L"] * (d["E"] * d["P"] + first + d["NH"] * d["H"] ** 2 + 2 * d["H"])


def _save_hidden(provider: str, d: dict) -> int:
    """Hidden activations per layer the CPU kernels keep for backward (0 for the others)."""
    if not provider.startswith("cpu"):
        return 0
    from omnifast.ops.bijection import CPU_SAVE_HIDDEN  # noqa: PLC0415

    return max(0, min(CPU_SAVE_HIDDEN[provider.split("_")[1]], d["NH"] + 1))


def recompute_fraction(provider: str, d: dict) -> float:
    """Share of a forward pass that the fused backward recomputes."""
    saved_mac = _save_hidden(provider, d) * d["L"] * d["H"] ** 2
    return 1.0 - saved_mac / mac_per_point(d, True)


def _call(provider: str, x, frame_idx, codes, params, n_freq, inverse):
    backend, prec = provider.split("_")
    backend = "torch" if backend == "ref" else backend
    with omnifast.backend(backend), omnifast.matmul_precision(prec):
        return coupling_stack(x, frame_idx, codes, params, COORDS, n_freq, inverse=inverse)


def _peak_extra_bytes(fn) -> int:
    return peak_extra_bytes(fn, _DEVICE)


def _saved_bytes(fn) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape_name,mode", CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_coupling_stack(benchmark, provider, shape_name, mode):
    shape = BIJECTION[shape_name]
    x, frame_idx, codes, params, d = make_problem(shape.points, shape.preset, shape.frames)
    nf = d["n_freq"]
    leaves = [x, codes, params.proj_w, params.proj_b, params.w_in, params.b_in,
              *params.w_hidden, *params.b_hidden, params.w_out, params.b_out]
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(_DEVICE)

    def fwdinv():
        y = _call(provider, x, frame_idx, codes, params, nf, False)
        return _call(provider, y, frame_idx, codes, params, nf, True)

    # correctness once, outside the timed region, on a slice
    n = 2048
    with torch.no_grad():
        ref = _call("ref_fp32", x[:n], frame_idx[:n], codes, params, nf, mode == "inv")
        got = _call(provider, x[:n], frame_idx[:n], codes, params, nf, mode == "inv")
    tol = 2e-2 if provider.endswith("bf16") else 1e-4
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)

    if mode in ("fwd", "inv"):
        def run():
            with torch.no_grad():
                out = _call(provider, x, frame_idx, codes, params, nf, mode == "inv")
            _sync()
            return out
        passes = 1
        saved = 0
    else:
        def run():
            grads = torch.autograd.grad(fwdinv(), leaves, dy)
            _sync()
            return grads
        passes = 2 * (3 + (0 if provider.startswith("ref") else recompute_fraction(provider, d)))
        saved = _saved_bytes(fwdinv)

    run()  # warm-up
    peak = _peak_extra_bytes(run)
    rounds = 3 if shape.points <= 8192 else 2
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=0)

    t = benchmark.stats.stats.min
    hoisted = not provider.startswith("ref")
    ref_passes = 2 * 3 if mode == "fwdinv_bwd" else 1
    dtype = torch.bfloat16 if provider.endswith("bf16") else torch.float32
    benchmark.extra_info.update({
        "shape": shape_name, "mode": mode, "provider": provider, "points": shape.points,
        "points_per_s": shape.points / t,
        "gflops_real": 2 * shape.points * mac_per_point(d, hoisted) * passes / t / 1e9,
        "gflops_ref_equiv": 2 * shape.points * mac_per_point(d, False) * ref_passes / t / 1e9,
        "machine_matmul_gflops": round(machine_matmul_gflops(dtype), 1),
        "peak_extra_MB": round(peak / 2**20, 1),
        "saved_MB": round(saved / 2**20, 1),
        "save_hidden": _save_hidden(provider, d),
    })
