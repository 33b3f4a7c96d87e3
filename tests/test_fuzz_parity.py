"""Parity of every fused CPU op with its reference over many random cases (marker ``fuzz``).

Each case draws, from its own seed, the weights' widths and depth, the point count (1 point,
tile edges, several tiles), the frame layout (random, contiguous by frame, one frame, only the
first and last frame, many frames with few points) and, where the op has one, how many hidden
activations the backward keeps. The comparison is the kink-aware, fp64-anchored rule of
tests/kinks.py, so a case cannot fail on one CPU and pass on another for rounding alone.

``make test`` runs ``FUZZ_CASES`` cases per op (about half a minute on 2 cores);
``OMNIFAST_FUZZ_CASES=N make fuzz`` runs N. Covered on 2026-12-05 with N = 200 on an AMD EPYC
(default and AVX2-restricted MKL/oneDNN): 800 cases, no failure.
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch
from kinks import assert_parity

import omnifast
from omnifast import ops
from omnifast.dispatch import available_backends
from omnifast.ops import bijection as ops_bijection
from omnifast.reference import affine_ref, composite_ref, coupling_stack_ref
from omnifast.reference.bijection import CouplingParams
from omnifast.reference.gabor import GaborParams, gabor_net_ref

FUZZ_CASES = int(os.environ.get("OMNIFAST_FUZZ_CASES", "16"))
CASES = range(FUZZ_CASES)
POINT_COUNTS = (1, 2, 7, 64, 255, 512, 513, 1100)
FRAME_LAYOUTS = ("random", "contiguous", "one frame", "first and last", "many frames")

pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.skipif(available_backends("coupling_stack", "cpu", torch.float32)["cpu"]
                       is not None, reason="omnifast._C not built"),
]


def _uniform(g, *shape, bound):
    return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * bound).float()


def _leaf(t):
    return t.requires_grad_()


def _frame_ids(rng: random.Random, g: torch.Generator, M: int, layout: str) -> tuple:
    """Frame ids of M points in the given layout and the number of frames F."""
    if layout == "one frame":
        return torch.zeros(M, dtype=torch.long), 1
    if layout == "many frames":
        F = 50
        return torch.randint(0, F, (M,), generator=g), F
    F = rng.randint(2, 6)
    if layout == "first and last":
        return torch.randint(0, 2, (M,), generator=g) * (F - 1), F
    ids = torch.randint(0, F, (M,), generator=g)
    return (ids.sort().values if layout == "contiguous" else ids), F


@pytest.mark.parametrize("case", CASES)
def test_coupling_stack(case, monkeypatch):
    rng, g = random.Random(case), torch.Generator().manual_seed(case)
    L, H, C = rng.choice((3, 6)), rng.choice((16, 32, 48)), rng.choice((4, 16))
    P, n_hidden, n_freq = rng.choice((16, 32)), rng.choice((0, 1, 2)), rng.choice((2, 4))
    M, layout = rng.choice(POINT_COUNTS), rng.choice(FRAME_LAYOUTS)
    inverse, keep = rng.random() < 0.5, rng.choice((0, 1, 2, 3))
    monkeypatch.setattr(ops_bijection, "CPU_SAVE_HIDDEN", {"fp32": keep, "bf16": keep})
    coords = tuple(rng.randrange(3) for _ in range(L))
    E = 2 + 4 * n_freq
    gain = 1.5
    params = CouplingParams(
        proj_w=_leaf(_uniform(g, L, P, E, bound=gain / math.sqrt(E))),
        proj_b=_leaf(_uniform(g, L, P, bound=gain / math.sqrt(E))),
        w_in=_leaf(_uniform(g, L, H, C + P, bound=gain / math.sqrt(C + P))),
        b_in=_leaf(_uniform(g, L, H, bound=gain / math.sqrt(C + P))),
        w_hidden=tuple(_leaf(_uniform(g, L, H, H, bound=gain / math.sqrt(H)))
                       for _ in range(n_hidden)),
        b_hidden=tuple(_leaf(_uniform(g, L, H, bound=gain / math.sqrt(H)))
                       for _ in range(n_hidden)),
        w_out=_leaf(_uniform(g, L, 2, H, bound=gain / math.sqrt(H))),
        b_out=_leaf(_uniform(g, L, 2, bound=gain / math.sqrt(H))),
    )
    frame_idx, F = _frame_ids(rng, g, M, layout)
    x = _leaf(_uniform(g, M, 3, bound=1.0))
    codes = _leaf(torch.randn(F, L, C, generator=g))

    def fused(*args):
        with omnifast.backend("cpu"):
            return ops.coupling_stack(*args[:6], inverse=args[6])

    leaves = [x, codes, *(t for t in params if isinstance(t, torch.Tensor)),
              *params.w_hidden, *params.b_hidden]
    names = ["x", "codes", "proj_w", "proj_b", "w_in", "b_in", "w_out", "b_out"] + \
        [f"w_hidden{i}" for i in range(n_hidden)] + [f"b_hidden{i}" for i in range(n_hidden)]
    assert_parity(fused, coupling_stack_ref, (x, frame_idx, codes, params, coords, n_freq,
                                              inverse),
                  leaves, names, num_points=M,
                  what=f"L{L} H{H} P{P} C{C} hidden{n_hidden} M{M} {layout} inv={inverse} "
                       f"keep{keep}")


@pytest.mark.parametrize("case", CASES)
def test_affine(case, monkeypatch):
    rng, g = random.Random(1000 + case), torch.Generator().manual_seed(1000 + case)
    H, n_layers, n_freq = rng.choice((16, 32, 64)), rng.randint(2, 5), rng.choice((2, 4))
    M, inverse, keep = rng.choice(POINT_COUNTS), rng.random() < 0.5, rng.randint(0, 4)
    monkeypatch.setattr(ops_bijection, "CPU_AFFINE_SAVE_HIDDEN", {"fp32": keep, "bf16": keep})
    sizes = [2 * n_freq + 2] + [H] * (n_layers - 1) + [5]
    ws = [_leaf(_uniform(g, o, i, bound=1 / math.sqrt(i))) for i, o in zip(sizes, sizes[1:])]
    bs = [_leaf(_uniform(g, o, bound=1 / math.sqrt(i))) for i, o in zip(sizes, sizes[1:])]
    x, t = _leaf(_uniform(g, M, 3, bound=1.0)), _leaf(torch.rand(M, generator=g))

    def fused(x, t, ws, bs, n_freq, inverse):
        with omnifast.backend("cpu"):
            return ops.affine(x, t, ws, bs, n_freq, inverse=inverse)

    names = ["x", "t"] + [f"w{i}" for i in range(len(ws))] + [f"b{i}" for i in range(len(bs))]
    assert_parity(fused, affine_ref, (x, t, ws, bs, n_freq, inverse), [x, t, *ws, *bs], names,
                  num_points=M, what=f"H{H} layers{n_layers} M{M} inv={inverse} keep{keep}")


@pytest.mark.parametrize("case", CASES)
def test_gabor_net(case):
    rng, g = random.Random(2000 + case), torch.Generator().manual_seed(2000 + case)
    D, H, O = rng.choice((1, 3)), rng.choice((16, 32, 48)), rng.choice((1, 4))
    n_lin, M = rng.randint(1, 3), rng.choice(POINT_COUNTS)
    scale = 256.0 / math.sqrt(n_lin + 1)
    params = GaborParams(
        filt_w=tuple(_leaf(_uniform(g, H, D, bound=scale / D)) for _ in range(n_lin + 1)),
        filt_b=tuple(_leaf(_uniform(g, H, bound=math.pi)) for _ in range(n_lin + 1)),
        mu=tuple(_leaf(_uniform(g, H, D, bound=1.0)) for _ in range(n_lin + 1)),
        gamma=tuple(_leaf(torch.rand(H, generator=g) * 4) for _ in range(n_lin + 1)),
        lin_w=tuple(_leaf(_uniform(g, H, H, bound=1 / math.sqrt(H))) for _ in range(n_lin)),
        lin_b=tuple(_leaf(_uniform(g, H, bound=1 / math.sqrt(H))) for _ in range(n_lin)),
        out_w=_leaf(_uniform(g, O, H, bound=1 / math.sqrt(H))),
        out_b=_leaf(_uniform(g, O, bound=1 / math.sqrt(H))),
    )
    x = _leaf(_uniform(g, M, D, bound=1.0))

    def fused(x, params):
        with omnifast.backend("cpu"):
            return ops.gabor_net(x, params)

    leaves = [x, *(t for field in params for t in (field if isinstance(field, tuple)
                                                   else (field,)))]
    names = ["x"] + [f"p{i}" for i in range(len(leaves) - 1)]
    assert_parity(fused, gabor_net_ref, (x, params), leaves, names, num_points=M,
                  kinks=False, what=f"D{D} H{H} O{O} linears{n_lin} M{M}")


@pytest.mark.parametrize("case", CASES)
def test_composite(case):
    rng, g = random.Random(3000 + case), torch.Generator().manual_seed(3000 + case)
    R, K, C = rng.choice((1, 5, 64, 300)), rng.choice((1, 8, 32, 33, 128)), rng.choice((1, 3, 7))
    near = rng.choice((0, 0, 1, 3))
    mask_from = rng.choice((None, 0, 2))
    sigma = _leaf(torch.rand(R, K, generator=g) * rng.choice((0.5, 2.0, 20.0)))
    values = _leaf(torch.randn(R, K, C, generator=g))
    kw = {"num_masked_near": min(near, K)}
    if mask_from is not None:
        kw.update(value_mask=torch.rand(R, K, generator=g) > 0.3, value_mask_from=mask_from)

    def as_one(out_weights):
        out, weights = out_weights
        return torch.cat([out, weights], dim=-1)

    def fused(sigma, values):
        with omnifast.backend("cpu"):
            return as_one(ops.composite(sigma, values, **kw))

    def reference(sigma, values):
        return as_one(composite_ref(sigma, values, **kw))

    assert_parity(fused, reference, (sigma, values), [sigma, values], ["sigma", "values"],
                  num_points=R, kinks=False, what=f"R{R} K{K} C{C} {kw.keys()}")
