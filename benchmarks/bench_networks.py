"""Benchmarks of the three networks on their tensor-core Triton kernels at the paper's size.

Each network at 65,536 samples (8 pairs x 256 points x 32 samples; ``OMNIFAST_BENCH_POINTS``
overrides), omnimotion widths:

* ``coupling``: the 6-layer coupling stack (P = H = 256, 2 extra hidden layers);
* ``affine``: the affine pre-layer (8 linears, 256 wide);
* ``colour``: the colour/density GaborNet (3 -> 512 x 3 linears -> 4).

Modes: ``fwd`` (forward, no grad), ``inv`` (inverse, no grad; the two maps), ``bwd`` (forward
with grad, then backward with a random upstream gradient). Providers:

* ``ref_eager_fp32``: the reference, eager PyTorch, fp32 (the original's arithmetic);
* ``ref_compile_bf16``: the reference under ``torch.compile`` in the bf16 matmul mode (GPU);
* ``triton_tf32`` / ``triton_bf16``: the Triton kernels (GPU);
* ``triton_bf16_graph``: the same, captured once in a CUDA graph and replayed (what the kernels
  cost without the host's launch overhead: a coupling direction is about 18 kernel launches
  forward and 130 backward).

Each record's ``extra_info``: ``tflops`` (the reference's matrix-product FLOPs per second, spec
6, so every provider is measured against the same work; backward counts 3 forward passes),
``tflops_executed`` (what the provider actually multiplies: the fused coupling stack hoists the
code term), ``peak_fraction`` (``tflops_executed`` over the device's dense peak at that
precision: H100/H200 SXM 989 bf16, 495 tf32, 67 fp32 TFLOP/s), ``peak_extra_MB`` and
``speedup_vs_ref`` (against ``ref_eager_fp32`` measured in the same session).

    .venv/bin/python -m pytest benchmarks/bench_networks.py --benchmark-only -q
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from memory import peak_extra_bytes

import omnifast
from omnifast import ops
from omnifast.config import get_preset
from omnifast.dispatch import available_backends
from omnifast.reference.bijection import CouplingParams, affine_ref, coupling_stack_ref
from omnifast.reference.gabor import gabor_net_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
POINTS = int(os.environ.get("OMNIFAST_BENCH_POINTS", 65_536))
COORDS = (1, 0, 2, 1, 0, 2)
CFG = get_preset("omnimotion").model

#: dense peaks in TFLOP/s (NVIDIA data sheets, SXM; the H200 has the H100's tensor cores)
_PEAKS = {"sxm": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
          "pcie": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}}


def dense_peak(precision: str) -> float | None:
    if DEVICE != "cuda":
        return None
    name = torch.cuda.get_device_name()
    if "H100" not in name and "H200" not in name:
        return None
    return _PEAKS["pcie" if "PCIe" in name else "sxm"][precision]


def _providers() -> list[str]:
    out = ["ref_eager_fp32"]
    if DEVICE == "cuda":
        out.append("ref_compile_bf16")
        if available_backends("coupling_stack", DEVICE)["triton"] is None:
            out += ["triton_tf32", "triton_bf16", "triton_bf16_graph"]
    return out


PROVIDERS = _providers()
CASES = [("coupling", m) for m in ("fwd", "inv", "bwd")] + \
        [("affine", m) for m in ("fwd", "inv", "bwd")] + [("colour", m) for m in ("fwd", "bwd")]


# ------------------------------------------------------------------------------------ problems
def _u(g, *shape, fan_in):
    w = (torch.rand(*shape, generator=g) * 2 - 1) / math.sqrt(fan_in)
    return w.to(DEVICE).requires_grad_()


def make_problem(network: str, points: int):
    """(run(inverse) -> output, leaves, macs_reference, macs_executed) for one network."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(points, 3, generator=g) * 2 - 1).to(DEVICE).requires_grad_()
    if network == "coupling":
        L, C, P, H = CFG.num_coupling, CFG.code_dim, CFG.proj_dim, CFG.coupling_hidden[0]
        NH, E = len(CFG.coupling_hidden) - 1, 2 + 4 * CFG.pe_freq
        p = CouplingParams(
            proj_w=_u(g, L, P, E, fan_in=E), proj_b=_u(g, L, P, fan_in=E),
            w_in=_u(g, L, H, C + P, fan_in=C + P), b_in=_u(g, L, H, fan_in=C + P),
            w_hidden=tuple(_u(g, L, H, H, fan_in=H) for _ in range(NH)),
            b_hidden=tuple(_u(g, L, H, fan_in=H) for _ in range(NH)),
            w_out=_u(g, L, 2, H, fan_in=H), b_out=_u(g, L, 2, fan_in=H))
        fi = torch.randint(0, 8, (points,), generator=g).sort().values.to(DEVICE)
        codes = torch.randn(8, L, C, generator=g).to(DEVICE).requires_grad_()

        def run(fn, inverse):
            return fn(x, fi, codes, p, COORDS, CFG.pe_freq, inverse)

        leaves = [x, codes, *[t for t in p if isinstance(t, torch.Tensor)], *p.w_hidden,
                  *p.b_hidden]
        mac_ref = L * (E * P + (C + P) * H + NH * H * H + 2 * H)
        mac_exec = L * (E * P + P * H + NH * H * H + 2 * H)
        return run, coupling_stack_ref, leaves, mac_ref, mac_exec
    if network == "affine":
        H, n = CFG.affine_hidden, CFG.affine_layers
        sizes = [2 * CFG.pe_freq + 2] + [H] * (n - 1) + [5]
        ws = [_u(g, o, i, fan_in=i) for i, o in zip(sizes[:-1], sizes[1:])]
        bs = [_u(g, o, fan_in=i) for i, o in zip(sizes[:-1], sizes[1:])]
        t = torch.rand(points, generator=g).to(DEVICE)

        def run(fn, inverse):
            return fn(x, t, ws, bs, CFG.pe_freq, inverse)

        mac = sum(i * o for i, o in zip(sizes[:-1], sizes[1:]))
        return run, affine_ref, [x, *ws, *bs], mac, mac
    from omnifast.model.gabor import GaborNet  # noqa: PLC0415

    torch.manual_seed(0)
    net = GaborNet(3, CFG.color_hidden, 4, n_layers=CFG.color_layers).to(DEVICE)

    def run(fn, inverse):
        return fn(x, net.params())

    H = CFG.color_hidden
    mac = CFG.color_layers * H * H + 4 * H + (CFG.color_layers + 1) * 2 * 3 * H
    return run, gabor_net_ref, [x, *net.parameters()], mac, mac


_OPS = {coupling_stack_ref: ops.coupling_stack, affine_ref: ops.affine,
        gabor_net_ref: ops.gabor_net}


def _fn(provider: str, ref_fn):
    """The function a provider runs: the reference (eager or compiled) or the dispatched op."""
    if provider.startswith("ref_compile"):
        return torch.compile(ref_fn)
    return ref_fn if provider.startswith("ref") else _OPS[ref_fn]


def _precision(provider: str) -> str:
    return provider.split("_")[2 if provider.startswith("ref") else 1]


def _call(provider: str, run, fn, inverse):
    backend, prec = provider.split("_")[0], _precision(provider)
    backend = "torch" if backend == "ref" else backend
    with omnifast.backend(backend), omnifast.matmul_precision(prec):
        return run(fn, inverse)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _graphed(body):
    """``body`` captured in a CUDA graph (after warm-up on a side stream); the returned function
    replays it and returns the captured outputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = body()

    def replay():
        graph.replay()
        return out

    return replay


_REF_TIMES: dict[tuple[str, str], float] = {}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("network,mode", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_network(benchmark, provider, network, mode):
    benchmark.group = f"{network}-{mode}"  # scripts/bench_table.py's ratios are per group
    run, ref_fn, leaves, mac_ref, mac_exec = make_problem(network, POINTS)
    fn = _fn(provider, ref_fn)
    inverse = mode == "inv"
    assert provider.startswith("ref") or fn is not ref_fn
    with torch.no_grad():  # correctness once, outside the timed region
        ref = _call("ref_eager_fp32", run, ref_fn, inverse)
        got = _call(provider, run, fn, inverse)
    tol = 5e-2 if provider.endswith("bf16") else 2e-3
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * ref.abs().max().item())
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)

    if mode == "bwd":
        def body():
            return torch.autograd.grad(_call(provider, run, fn, False), leaves, dy,
                                       allow_unused=True)
        passes = 3
    else:
        def body():
            with torch.no_grad():
                return _call(provider, run, fn, inverse)
        passes = 1

    if provider.endswith("_graph"):
        try:
            body = _graphed(body)
        except RuntimeError as exc:  # capture is not supported here: say so, do not fail
            pytest.skip(f"CUDA graph capture failed: {exc}")

    def step():
        out = body()
        _sync()
        return out

    step()  # warm-up (and compile)
    step()
    peak = peak_extra_bytes(step, DEVICE)
    benchmark.pedantic(step, rounds=5 if DEVICE == "cuda" else 2, warmup_rounds=1)
    t = benchmark.stats.stats.min
    if provider == "ref_eager_fp32":
        _REF_TIMES[(network, mode)] = t
    precision = _precision(provider)
    executed = 2 * POINTS * (mac_ref if provider.startswith("ref") else mac_exec) * passes / t
    peak_tflops = dense_peak(precision)
    benchmark.extra_info.update({
        "network": network, "mode": mode, "provider": provider, "points": POINTS,
        "tflops": round(2 * POINTS * mac_ref * passes / t / 1e12, 3),
        "tflops_executed": round(executed / 1e12, 3),
        "peak_fraction": round(executed / 1e12 / peak_tflops, 4) if peak_tflops else None,
        "peak_extra_MB": round(peak / 2**20, 1),
        "speedup_vs_ref": (round(_REF_TIMES[(network, mode)] / t, 2)
                           if (network, mode) in _REF_TIMES else None),
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
    })
