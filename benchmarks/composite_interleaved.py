"""Fused against reference compositing, timed in alternation (fwd+bwd at the training shape).

The pytest-benchmark suite (``bench_composite.py``) times each provider in its own block of
rounds. On the shared 2-core machines the memory bandwidth drops to about half for stretches
of 0.25-2 s, so two blocks timed a few seconds apart can see different machines. Here the
calls alternate (a few fused calls, then one reference call, over and over), so both sample
the same stretches of time, and the ratio of their minima (and of their 10th percentiles)
compares like with like. The reference is ``composite_ref`` under autograd; the fused path is
``omnifast.ops.composite`` with the ``cpu`` backend, both with upstream gradients for the
composited values and the weights.

    flock /tmp/omnifast-bench.lock env OMP_WAIT_POLICY=PASSIVE .venv/bin/python \\
        benchmarks/composite_interleaved.py [--seconds 30] [--shape train_65k] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes import COMPOSITE  # noqa: E402

import omnifast  # noqa: E402
from omnifast.ops.composite import composite  # noqa: E402
from omnifast.reference.composite import composite_ref  # noqa: E402


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="train_65k", choices=sorted(COMPOSITE))
    ap.add_argument("--seconds", type=float, default=30.0, help="total time to sample")
    ap.add_argument("--fused-per-ref", type=int, default=5,
                    help="fused calls between two reference calls")
    ap.add_argument("--json", help="write the numbers here")
    a = ap.parse_args(argv)

    shape = COMPOSITE[a.shape]
    R, K, C = shape.rays, shape.samples, shape.channels
    g = torch.Generator().manual_seed(0)
    sigma = torch.rand(R, K, generator=g) * 0.5
    values = torch.randn(R, K, C, generator=g)
    dout = torch.randn(R, C, generator=g)
    dweights = torch.randn(R, K, generator=g)
    s_leaf = sigma.clone().requires_grad_(True)
    v_leaf = values.clone().requires_grad_(True)

    def fused():
        with omnifast.backend("cpu"):
            out, w = composite(s_leaf, v_leaf)
        return torch.autograd.grad([out, w], [s_leaf, v_leaf], [dout, dweights])

    def ref():
        out, w = composite_ref(s_leaf, v_leaf)
        return torch.autograd.grad([out, w], [s_leaf, v_leaf], [dout, dweights])

    # the two agree before anything is timed
    for x, y in zip(fused(), ref()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)

    times: dict[str, list[float]] = {"fused": [], "ref": []}
    t_end = time.perf_counter() + a.seconds
    while time.perf_counter() < t_end:
        for name, fn, n in (("fused", fused, a.fused_per_ref), ("ref", ref, 1)):
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)

    res = {"shape": f"R={R} K={K} C={C}", "seconds": a.seconds,
           "threads": torch.get_num_threads(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    for name, ts in times.items():
        res[name] = {"calls": len(ts), "min_ms": round(min(ts) * 1e3, 3),
                     "p10_ms": round(_quantile(ts, 0.1) * 1e3, 3),
                     "median_ms": round(_quantile(ts, 0.5) * 1e3, 3)}
    for stat in ("min_ms", "p10_ms", "median_ms"):
        res[f"ratio_{stat[:-3]}"] = round(res["ref"][stat] / res["fused"][stat], 2)
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
