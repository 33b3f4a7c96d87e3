"""Parity of the fused coupling stack (CPU C++ and Triton backends) with the reference.

Small widths keep the suite fast (H = P = 32, C = 16, 6 layers, 2 extra hidden layers); the
omnimotion widths are exercised by benchmarks/bench_bijection.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_close, record_calls, saved_bytes_per_point
from kinks import assert_parity, kink_pre_activations, with_edited_kink

import omnifast
from omnifast import ops
from omnifast.dispatch import available_backends, resolve
from omnifast.ops import bijection as ops_bijection
from omnifast.reference.bijection import CouplingParams, coupling_stack_ref

COORDS = (1, 0, 2, 1, 0, 2)
N_FREQ = 4


def _unavailable(name: str) -> str | None:
    on_gpu = name == "triton" and torch.cuda.is_available()  # see run()
    return available_backends("coupling_stack", "cuda" if on_gpu else "cpu", torch.float32)[name]


def _backend_param(name: str):
    reason = _unavailable(name)
    return pytest.param(name, marks=pytest.mark.skipif(reason is not None,
                                                       reason=str(reason)))


FUSED = [_backend_param("cpu"), _backend_param("triton")]


def make_params(L=6, H=32, P=32, C=16, n_hidden=2, n_freq=N_FREQ, dtype=torch.float32,
                seed=0, gain=1.5):
    """Random stacked weights at nn.Linear-like scale (times ``gain``)."""
    g = torch.Generator().manual_seed(seed)
    E = 2 + 4 * n_freq

    def u(*shape, fan_in):
        w = (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * gain / math.sqrt(
            fan_in)
        return w.to(dtype).requires_grad_()

    return CouplingParams(
        proj_w=u(L, P, E, fan_in=E), proj_b=u(L, P, fan_in=E),
        w_in=u(L, H, C + P, fan_in=C + P), b_in=u(L, H, fan_in=C + P),
        w_hidden=tuple(u(L, H, H, fan_in=H) for _ in range(n_hidden)),
        b_hidden=tuple(u(L, H, fan_in=H) for _ in range(n_hidden)),
        w_out=u(L, 2, H, fan_in=H), b_out=u(L, 2, fan_in=H),
    )


def make_inputs(M, F, params, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    L, C = params.num_layers, params.code_dim
    x = (torch.rand(M, 3, generator=g, dtype=torch.float64) * 2 - 1).to(dtype).requires_grad_()
    frame_idx = torch.randint(0, F, (M,), generator=g)
    codes = torch.randn(F, L, C, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    return x, frame_idx, codes


def leaves(x, codes, params):
    return [x, codes, params.proj_w, params.proj_b, params.w_in, params.b_in, *params.w_hidden,
            *params.b_hidden, params.w_out, params.b_out]


LEAF_NAMES = ["x", "codes", "proj_w", "proj_b", "w_in", "b_in", "w_hidden0", "w_hidden1",
              "b_hidden0", "b_hidden1", "w_out", "b_out"]


def run(backend, x, frame_idx, codes, params, inverse, coords=COORDS, n_freq=N_FREQ):
    on_gpu = backend == "triton" and torch.cuda.is_available()  # Triton on CUDA copies
    if on_gpu:
        x, frame_idx, codes = x.cuda(), frame_idx.cuda(), codes.cuda()
        params = CouplingParams(*[tuple(t.cuda() for t in v) if isinstance(v, tuple)
                                  else v.cuda() for v in params])
    with omnifast.backend(backend):
        y = ops.coupling_stack(x, frame_idx, codes, params, coords, n_freq, inverse=inverse)
    return y.cpu() if on_gpu else y


def fused_op(backend):
    """The fused coupling stack as ``op(x, frame_idx, codes, params, coords, n_freq, inverse)``."""

    def op(x, frame_idx, codes, params, coords, n_freq, inverse):
        return run(backend, x, frame_idx, codes, params, inverse, coords, n_freq)

    return op


def assert_matches_reference(op, x, frame_idx, codes, params, inverse, what=""):
    """Values and gradients against the reference, by the kink-aware rule of tests/kinks.py."""
    return assert_parity(op, coupling_stack_ref,
                         (x, frame_idx, codes, params, COORDS, N_FREQ, inverse),
                         leaves(x, codes, params), LEAF_NAMES, num_points=x.shape[0],
                         what=what)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("M,F", [(1, 1), (257, 1), (1000, 5)])
def test_values_and_gradients_match_reference(backend, inverse, M, F):
    if backend == "triton" and M > 300:
        M = 300  # each interpreted program costs ~1 ms per layer
    params = make_params()
    x, frame_idx, codes = make_inputs(M, F, params)
    assert_matches_reference(fused_op(backend), x, frame_idx, codes, params, inverse,
                             what=backend)


# The kink rule itself. Kink ops of one layer, in call order: projection, first hidden layer,
# len(w_hidden) extra hidden layers, the clamp of s.
KINKS_PER_LAYER = 5


def _first_hidden_call(layer, inverse, num_layers=6):
    position = num_layers - 1 - layer if inverse else layer
    return position * KINKS_PER_LAYER + 1


def _on_kink(params, x, frame_idx, codes, point, unit, inverse):
    """``params`` with layer 0's first-hidden-layer bias moved so that ``point``'s pre-activation
    of ``unit`` is within 1e-7 of the kink in fp64 (layer 0 is the last one the inverse
    applies, as in the case first seen on an Intel CPU)."""
    call = _first_hidden_call(0, inverse)
    args = (x, frame_idx, codes, params, COORDS, N_FREQ, inverse)
    pre = kink_pre_activations(coupling_stack_ref, args)[call][point, unit]
    b_in = params.b_in.detach().clone()
    b_in[0, unit] -= pre.item()
    moved = params._replace(b_in=b_in.requires_grad_())
    args = (x, frame_idx, codes, moved, COORDS, N_FREQ, inverse)
    pre = kink_pre_activations(coupling_stack_ref, args)[call][point, unit].item()
    assert abs(pre) < 1e-7, pre
    return moved, call


def _force_side(call_point_unit, slope):
    """A stack that evaluates one unit of one point with the given slope (one side of the kink,
    whatever side its rounding gives)."""
    _, point, unit = call_point_unit

    def edit(pre, out):
        forced = out.clone()
        forced[point, unit] = pre[point, unit] * slope
        return forced

    return edit


@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
def test_kink_rule_passes_either_side_of_a_kink(inverse):
    """A pre-activation within 1e-7 of the kink: a stack that takes the slope-1 side and one that
    takes the slope-0.01 side both pass, and so do the fused kernels, although the two sides'
    gradients differ far beyond any rounding tolerance."""
    params = make_params(seed=41)
    x, frame_idx, codes = make_inputs(200, 3, params, seed=42)
    point, unit = 17, 5
    params, call = _on_kink(params, x, frame_idx, codes, point, unit, inverse)
    sides = {}
    for slope in (1.0, 0.01):
        op = with_edited_kink(coupling_stack_ref, call, _force_side((call, point, unit), slope))
        near = assert_matches_reference(op, x, frame_idx, codes, params, inverse,
                                        what=f"slope {slope}")
        assert near[point], "the point on the kink was not left out"
        y = op(x, frame_idx, codes, params, COORDS, N_FREQ, inverse)
        sides[slope] = torch.autograd.grad(y, x, torch.ones_like(y))[0][point]
    assert (sides[1.0] - sides[0.01]).abs().max() > 1e-2, "the two sides do not differ"
    for backend in ("cpu", "triton"):
        if _unavailable(backend) is None:
            assert_matches_reference(fused_op(backend), x, frame_idx, codes, params, inverse,
                                     what=backend)


@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("negative_slope", [0.02, 0.0125])
def test_kink_rule_fails_a_wrong_slope(inverse, negative_slope):
    """One hidden unit of one layer with the wrong negative slope fails the rule."""
    params = make_params()
    x, frame_idx, codes = make_inputs(1000, 5, params)
    unit = 3

    def edit(pre, out):
        wrong = out.clone()
        wrong[:, unit] = torch.where(pre[:, unit] > 0, pre[:, unit],
                                     pre[:, unit] * negative_slope)
        return wrong

    op = with_edited_kink(coupling_stack_ref, _first_hidden_call(2, inverse) + 1, edit)
    with pytest.raises(AssertionError, match="error"):
        assert_matches_reference(op, x, frame_idx, codes, params, inverse)


@pytest.mark.parametrize("backend", FUSED)
def test_forward_then_inverse_is_identity(backend):
    params = make_params(seed=3)
    x, frame_idx, codes = make_inputs(300, 4, params, seed=4)
    with torch.no_grad():
        y = run(backend, x, frame_idx, codes, params, inverse=False)
        back = run(backend, y, frame_idx, codes, params, inverse=True)
    assert (y - x).abs().max() > 1e-2  # the map is not the identity
    assert_close(back, x, rtol=0, atol=1e-5, name="round trip")


@pytest.mark.parametrize("backend", FUSED)
def test_empty_input(backend):
    params = make_params()
    x, frame_idx, codes = make_inputs(0, 2, params)
    y = run(backend, x, frame_idx, codes, params, inverse=False)
    assert y.shape == (0, 3)
    (y.sum() + 0.0).backward()
    assert params.w_out.grad is not None and torch.count_nonzero(params.w_out.grad) == 0


def test_cpu_gradcheck_float64():
    if _unavailable("cpu"):
        pytest.skip(_unavailable("cpu"))
    params = make_params(L=3, H=4, P=4, C=2, n_hidden=1, n_freq=1, dtype=torch.float64, seed=5)
    x, frame_idx, codes = make_inputs(5, 2, params, dtype=torch.float64, seed=6)
    coords = (1, 0, 2)
    names = ["proj_w", "proj_b", "w_in", "b_in", "w_hidden", "b_hidden", "w_out", "b_out"]

    for inverse in (False, True):
        def fn(x, codes, *flat, inverse=inverse):
            p = dict(zip(names, flat))
            p["w_hidden"], p["b_hidden"] = (p["w_hidden"],), (p["b_hidden"],)
            return run("cpu", x, frame_idx, codes, CouplingParams(**p), inverse, coords, 1)

        flat = [params.proj_w, params.proj_b, params.w_in, params.b_in, params.w_hidden[0],
                params.b_hidden[0], params.w_out, params.b_out]
        assert torch.autograd.gradcheck(fn, (x, codes, *flat), eps=1e-6, atol=1e-6)


def _rel_err(a, e):
    return ((a.double() - e.double()).norm() / e.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
def test_bf16_error_at_most_twice_torch_bf16(backend, inverse):
    params = make_params(seed=11)
    x, frame_idx, codes = make_inputs(256, 3, params, seed=12)
    dy = torch.randn(256, 3, generator=torch.Generator().manual_seed(13))
    lv = leaves(x, codes, params)
    y32 = coupling_stack_ref(x, frame_idx, codes, params, COORDS, N_FREQ, inverse)
    g32 = torch.autograd.grad(y32, lv, dy)
    with omnifast.matmul_precision("bf16"):
        ytb = coupling_stack_ref(x, frame_idx, codes, params, COORDS, N_FREQ, inverse)
        gtb = torch.autograd.grad(ytb, lv, dy)
        y = run(backend, x, frame_idx, codes, params, inverse)
        g = torch.autograd.grad(y, lv, dy)
    torch_err = _rel_err(ytb, y32)
    assert torch_err > 1e-5, "the reference did not run in bf16"
    assert _rel_err(y, y32) <= 2 * torch_err, (
        f"y: bf16 error {_rel_err(y, y32):.3g} vs torch bf16 {torch_err:.3g}")
    for name, a, t, e in zip(LEAF_NAMES, g, gtb, g32):
        ours, theirs = _rel_err(a, e), _rel_err(t, e)
        assert ours <= 2 * theirs + 1e-6, f"d{name}: bf16 error {ours:.3g} vs torch {theirs:.3g}"


def test_backward_saves_only_coordinates(monkeypatch):
    """In the recompute mode autograd keeps the [L, M, 3] layer inputs, not [M, 256]-wide
    activations."""
    if _unavailable("cpu"):
        pytest.skip(_unavailable("cpu"))
    monkeypatch.setattr(ops_bijection, "CPU_SAVE_HIDDEN", {"fp32": 0, "bf16": 0})
    params = make_params(H=64, P=64)
    M = 2000
    x, frame_idx, codes = make_inputs(M, 3, params)
    saved = []

    def pack(t):
        saved.append(t.numel() if t.shape[:1] != (0,) else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run("cpu", x, frame_idx, codes, params, inverse=False)
    per_point = (sum(saved) - sum(p.numel() for p in leaves(x, codes, params)[2:]) * 2) / M
    # layer inputs (6 x 3) plus the frame index; the reference keeps hundreds of floats per point
    assert per_point < 6 * 3 + 2, per_point
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run("torch", x, frame_idx, codes, params, inverse=False)
    assert sum(saved) / M > 500


def test_auto_dispatch_prefers_fused_cpu_and_falls_back():
    if _unavailable("cpu"):
        pytest.skip(_unavailable("cpu"))
    name, _ = resolve("coupling_stack", torch.device("cpu"), torch.float32)
    assert name == "cpu"
    name, _ = resolve("coupling_stack", torch.device("cpu"), torch.bfloat16)
    assert name == "torch"
    with omnifast.backend("cpu"), pytest.raises(omnifast.BackendUnavailableError, match="float"):
        resolve("coupling_stack", torch.device("cpu"), torch.float16)


def test_model_bijection_uses_fused_path(monkeypatch, seed):
    if _unavailable("cpu"):
        pytest.skip(_unavailable("cpu"))
    from omnifast.config import ModelConfig
    from omnifast.model.nvp import InvertibleMap

    cfg = ModelConfig(code_dim=16, coupling_hidden=(32, 32, 32), proj_dim=32, use_affine=False)
    net = InvertibleMap(cfg, coords=COORDS)
    x = (torch.rand(100, 3) * 2 - 1).requires_grad_()
    fi = torch.randint(0, 3, (100,))
    psi, t = torch.randn(3, 16), torch.rand(3)
    names, weights = zip(*net.named_parameters())

    def model(backend):
        def forward(x, fi, psi, t, *weights):
            with omnifast.backend(backend):
                return torch.func.functional_call(net, dict(zip(names, weights)), (x, fi, psi, t))

        return forward

    calls = record_calls(monkeypatch, ops_bijection.CouplingStackFunction, "apply")
    assert_parity(model("auto"), model("torch"), (x, fi, psi, t, *weights), [x, *weights],
                  ["x", *names], num_points=100, what="InvertibleMap")
    assert calls, "the automatic backend did not run the fused coupling stack"


def _save_hidden(monkeypatch, k):
    monkeypatch.setattr(ops_bijection, "CPU_SAVE_HIDDEN", {"fp32": k, "bf16": k})


@pytest.mark.parametrize("keep", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
def test_cpu_saved_hidden_matches_reference(monkeypatch, keep, inverse):
    """Every number of kept hidden activations (3 = all of them with 2 extra hidden layers; 5 is
    capped to 3) gives the reference's values and gradients."""
    if _unavailable("cpu"):
        pytest.skip(_unavailable("cpu"))
    _save_hidden(monkeypatch, keep)
    params = make_params(seed=21)
    # 1100 points: two full tiles of 512 and a partial one
    x, frame_idx, codes = make_inputs(1100, 5, params, seed=22)
    assert_matches_reference(fused_op("cpu"), x, frame_idx, codes, params, inverse,
                             what=f"keep {keep}")


@pytest.mark.parametrize("keep", [1, 3])
def test_cpu_saved_hidden_bf16_equals_recompute(monkeypatch, keep):
    """In the bf16 mode the kept activations are the bf16 values the recompute would produce, so
    the gradients agree with the recompute mode to fp32 rounding."""
    if _unavailable("cpu"):
        pytest.skip(_unavailable("cpu"))
    params = make_params(seed=31)
    x, frame_idx, codes = make_inputs(700, 3, params, seed=32)
    lv = leaves(x, codes, params)
    dy = torch.randn(700, 3, generator=torch.Generator().manual_seed(33))
    out = {}
    for k in (0, keep):
        _save_hidden(monkeypatch, k)
        with omnifast.matmul_precision("bf16"):
            y = run("cpu", x, frame_idx, codes, params, inverse=False)
        out[k] = (y, torch.autograd.grad(y, lv, dy))
    assert torch.equal(out[0][0], out[keep][0])
    for name, a, e in zip(LEAF_NAMES, out[keep][1], out[0][1]):
        scale = e.abs().max().item() + 1e-6
        assert_close(a, e, rtol=1e-5, atol=1e-6 * scale, name=f"bf16 keep {keep} d{name}")


def test_cpu_saved_hidden_gradcheck_float64(monkeypatch):
    if _unavailable("cpu"):
        pytest.skip(_unavailable("cpu"))
    params = make_params(L=3, H=4, P=4, C=2, n_hidden=1, n_freq=1, dtype=torch.float64, seed=5)
    x, frame_idx, codes = make_inputs(5, 2, params, dtype=torch.float64, seed=6)
    coords = (1, 0, 2)
    names = ["proj_w", "proj_b", "w_in", "b_in", "w_hidden", "b_hidden", "w_out", "b_out"]
    flat = [params.proj_w, params.proj_b, params.w_in, params.b_in, params.w_hidden[0],
            params.b_hidden[0], params.w_out, params.b_out]
    for keep in (1, 2):
        _save_hidden(monkeypatch, keep)
        for inverse in (False, True):
            def fn(x, codes, *flat, inverse=inverse):
                p = dict(zip(names, flat))
                p["w_hidden"], p["b_hidden"] = (p["w_hidden"],), (p["b_hidden"],)
                return run("cpu", x, frame_idx, codes, CouplingParams(**p), inverse, coords, 1)

            assert torch.autograd.gradcheck(fn, (x, codes, *flat), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("keep", [1, 2])
def test_cpu_saved_hidden_memory(monkeypatch, keep):
    """Kept activations cost exactly keep x H values per point and layer on top of the
    coordinates."""
    if _unavailable("cpu"):
        pytest.skip(_unavailable("cpu"))
    _save_hidden(monkeypatch, keep)
    params = make_params(H=64, P=64)
    M = 2000
    x, frame_idx, codes = make_inputs(M, 3, params)
    fused = saved_bytes_per_point(lambda: run("cpu", x, frame_idx, codes, params,
                                              inverse=False), M)
    # layer inputs (6 x 3 fp32), the int64 frame index, keep x 64 fp32 activations per layer
    assert fused == M * 4 * (6 * 3 + 2 + 6 * keep * 64), fused / M


def test_cpu_save_hidden_env_parsing():
    base = dict(ops_bijection.CPU_SAVE_HIDDEN)
    assert ops_bijection._save_hidden_from_env("0") == {"fp32": 0, "bf16": 0}
    assert ops_bijection._save_hidden_from_env("fp32=2, bf16=3") == {"fp32": 2, "bf16": 3}
    assert ops_bijection._save_hidden_from_env("bf16=1") == {**base, "bf16": 1}
    for bad in ("fp16=1", "fp32=x", "-1"):
        with pytest.raises(ValueError, match="OMNIFAST_CPU_SAVE_HIDDEN"):
            ops_bijection._save_hidden_from_env(bad)
