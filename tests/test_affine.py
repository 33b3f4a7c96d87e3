"""Parity of the fused CPU affine pre-layer with the reference (omnifast.reference.affine_ref).

Small widths keep the suite fast (H = 32, 5 linears, i.e. 3 extra hidden layers); the omnimotion
widths are exercised by benchmarks/bench_train_step.py.
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
from omnifast.reference.bijection import affine_ref

N_FREQ = 4


def _unavailable() -> str | None:
    return available_backends("affine", "cpu", torch.float32)["cpu"]


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))


def make_weights(H=32, n_layers=5, n_freq=N_FREQ, dtype=torch.float64, seed=0, gain=1.0):
    """nn.Linear-like weights (times ``gain``) of an MLP (2 n_freq + 2) -> H ... H -> 5."""
    g = torch.Generator().manual_seed(seed)
    sizes = [2 * n_freq + 2] + [H] * (n_layers - 1) + [5]
    ws, bs = [], []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = gain / math.sqrt(fan_in)
        w = (torch.rand(fan_out, fan_in, generator=g, dtype=torch.float64) * 2 - 1) * bound
        b = (torch.rand(fan_out, generator=g, dtype=torch.float64) * 2 - 1) * bound
        ws.append(w.to(dtype).requires_grad_())
        bs.append(b.to(dtype).requires_grad_())
    return ws, bs


def make_inputs(M, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(M, 3, generator=g, dtype=torch.float64) * 2 - 1).to(dtype).requires_grad_()
    t = torch.rand(M, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    return x, t


def run(backend, x, t, ws, bs, inverse, n_freq=N_FREQ):
    with omnifast.backend(backend):
        return ops.affine(x, t, ws, bs, n_freq, inverse=inverse)


def _keep(monkeypatch, k):
    monkeypatch.setattr(ops_bijection, "CPU_AFFINE_SAVE_HIDDEN", {"fp32": k, "bf16": k})


def _names(ws):
    return (["x", "t"] + [f"w{i}" for i in range(len(ws))] + [f"b{i}" for i in range(len(ws))])


def fused_affine(x, t, ws, bs, n_freq, inverse):
    return run("cpu", x, t, ws, bs, inverse, n_freq)


def assert_matches_reference(op, x, t, ws, bs, inverse, what=""):
    """Values and gradients against the reference, by the kink-aware rule of tests/kinks.py."""
    return assert_parity(op, affine_ref, (x, t, ws, bs, N_FREQ, inverse), [x, t, *ws, *bs],
                         _names(ws), num_points=x.shape[0], what=what)


@pytest.mark.parametrize("keep", [0, 1, 4, 9])
@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("M", [1, 257, 1100])
def test_values_and_gradients_match_reference(monkeypatch, keep, inverse, M):
    """Every number of kept activations (4 = all of them with 5 linears, 9 is capped to 4); 1100
    points are two full tiles of 512 and a partial one."""
    _keep(monkeypatch, keep)
    ws, bs = make_weights(dtype=torch.float32)
    x, t = make_inputs(M)
    assert_matches_reference(fused_affine, x, t, ws, bs, inverse, what=f"keep {keep}")


def test_two_layers_no_hidden_product():
    """The smallest MLP (first and output linear only, no H x H layer)."""
    ws, bs = make_weights(n_layers=2, dtype=torch.float32, seed=2)
    assert len(ws) == 2
    x, t = make_inputs(100, seed=3)
    assert_matches_reference(fused_affine, x, t, ws, bs, False)


@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
def test_kink_rule_passes_either_side_of_a_kink(inverse):
    """A ReLU pre-activation within 1e-7 of the kink: taking the slope-1 side and the slope-0
    side both pass, and so does the fused kernel, although the two sides' gradients differ far
    beyond any rounding tolerance."""
    ws, bs = make_weights(dtype=torch.float32, seed=14)
    x, t = make_inputs(200, seed=15)
    point, unit, call = 23, 7, 2  # the third hidden layer's ReLU
    pre = kink_pre_activations(affine_ref, (x, t, ws, bs, N_FREQ, inverse))[call][point, unit]
    bs = [b.detach().clone() for b in bs]
    bs[call][unit] -= pre.item()
    bs = [b.requires_grad_() for b in bs]
    pre = kink_pre_activations(affine_ref, (x, t, ws, bs, N_FREQ, inverse))[call][point, unit]
    assert abs(pre.item()) < 1e-7, pre.item()
    sides = {}
    for slope in (1.0, 0.0):
        def edit(pre, out, slope=slope):
            forced = out.clone()
            forced[point, unit] = pre[point, unit] * slope
            return forced

        op = with_edited_kink(affine_ref, call, edit)
        near = assert_matches_reference(op, x, t, ws, bs, inverse, what=f"slope {slope}")
        assert near[point], "the point on the kink was not left out"
        y = op(x, t, ws, bs, N_FREQ, inverse)
        sides[slope] = torch.autograd.grad(y, x, torch.ones_like(y))[0][point]
    assert (sides[1.0] - sides[0.0]).abs().max() > 1e-3, "the two sides do not differ"
    assert_matches_reference(fused_affine, x, t, ws, bs, inverse, what="cpu")


@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
def test_kink_rule_fails_a_wrong_slope(inverse):
    """One hidden unit whose ReLU leaks (slope 0.05 below the kink) fails the rule."""
    ws, bs = make_weights(dtype=torch.float32)
    x, t = make_inputs(1100)
    unit = 4

    def edit(pre, out):
        wrong = out.clone()
        wrong[:, unit] = torch.where(pre[:, unit] > 0, pre[:, unit], pre[:, unit] * 0.05)
        return wrong

    with pytest.raises(AssertionError, match="error"):
        assert_matches_reference(with_edited_kink(affine_ref, 1, edit), x, t, ws, bs, inverse)


def test_forward_then_inverse_is_identity():
    ws, bs = make_weights(dtype=torch.float32, seed=5)
    x, t = make_inputs(300, seed=6)
    with torch.no_grad():
        y = run("cpu", x, t, ws, bs, inverse=False)
        back = run("cpu", y, t, ws, bs, inverse=True)
    assert (y - x).abs().max() > 1e-2  # the map is not the identity
    assert_close(back, x, rtol=0, atol=1e-5, name="round trip")


def test_empty_input():
    ws, bs = make_weights(dtype=torch.float32)
    x, t = make_inputs(0)
    y = run("cpu", x, t, ws, bs, inverse=False)
    assert y.shape == (0, 3)
    (y.sum() + 0.0).backward()
    assert ws[-1].grad is not None and torch.count_nonzero(ws[-1].grad) == 0
    assert x.grad.shape == (0, 3) and t.grad.shape == (0,)


@pytest.mark.parametrize("keep", [0, 2])
def test_gradcheck_float64(monkeypatch, keep):
    _keep(monkeypatch, keep)
    ws, bs = make_weights(H=4, n_layers=3, n_freq=2, dtype=torch.float64, seed=8)
    x, t = make_inputs(5, dtype=torch.float64, seed=9)
    n = len(ws)
    for inverse in (False, True):
        def fn(x, t, *flat, inverse=inverse):
            return run("cpu", x, t, list(flat[:n]), list(flat[n:]), inverse, n_freq=2)

        assert torch.autograd.gradcheck(fn, (x, t, *ws, *bs), eps=1e-6, atol=1e-6)


def _rel_err(a, e):
    return ((a.double() - e.double()).norm() / e.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("keep", [0, 2])
@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
def test_bf16_error_at_most_twice_torch_bf16(monkeypatch, keep, inverse):
    _keep(monkeypatch, keep)
    ws, bs = make_weights(dtype=torch.float32, seed=11)
    x, t = make_inputs(600, seed=12)
    dy = torch.randn(600, 3, generator=torch.Generator().manual_seed(13))
    leaves = [x, t, *ws, *bs]
    y32 = affine_ref(x, t, ws, bs, N_FREQ, inverse)
    g32 = torch.autograd.grad(y32, leaves, dy)
    with omnifast.matmul_precision("bf16"):
        ytb = affine_ref(x, t, ws, bs, N_FREQ, inverse)
        gtb = torch.autograd.grad(ytb, leaves, dy)
        y = run("cpu", x, t, ws, bs, inverse)
        g = torch.autograd.grad(y, leaves, dy)
    torch_err = _rel_err(ytb, y32)
    assert torch_err > 1e-5, "the reference did not run in bf16"
    assert _rel_err(y, y32) <= 2 * torch_err, (
        f"y: bf16 error {_rel_err(y, y32):.3g} vs torch bf16 {torch_err:.3g}")
    for name, a, tb, e in zip(_names(ws), g, gtb, g32):
        ours, theirs = _rel_err(a, e), _rel_err(tb, e)
        assert ours <= 2 * theirs + 1e-6, f"d{name}: bf16 error {ours:.3g} vs torch {theirs:.3g}"


@pytest.mark.parametrize("keep", [0, 2])
def test_backward_saves_only_inputs_and_kept_activations(monkeypatch, keep):
    """Autograd keeps x, t and keep x H activations per point; the reference keeps every
    layer's input."""
    _keep(monkeypatch, keep)
    ws, bs = make_weights(H=64, dtype=torch.float32)
    M = 2000
    x, t = make_inputs(M)
    fused = saved_bytes_per_point(lambda: run("cpu", x, t, ws, bs, inverse=False), M)
    assert fused == M * 4 * (3 + 1 + keep * 64), fused / M
    ref = saved_bytes_per_point(lambda: run("torch", x, t, ws, bs, inverse=False), M)
    assert ref / M > 4 * 4 * 64


def test_auto_dispatch_prefers_fused_cpu_and_falls_back():
    name, _ = resolve("affine", torch.device("cpu"), torch.float32)
    assert name == "cpu"
    name, _ = resolve("affine", torch.device("cpu"), torch.bfloat16)
    assert name == "torch"
    with omnifast.backend("cpu"), pytest.raises(omnifast.BackendUnavailableError, match="float"):
        resolve("affine", torch.device("cpu"), torch.float16)


def test_model_uses_fused_affine(monkeypatch, seed):
    from omnifast.config import ModelConfig
    from omnifast.model.nvp import InvertibleMap

    cfg = ModelConfig(code_dim=16, coupling_hidden=(32, 32), proj_dim=32, use_affine=True,
                      affine_hidden=32, affine_layers=4)
    net = InvertibleMap(cfg, coords=(1, 0, 2, 1, 0, 2))
    x = (torch.rand(300, 3) * 2 - 1).requires_grad_()
    fi = torch.randint(0, 3, (300,))
    psi, t = torch.randn(3, 16), torch.rand(3)
    names, weights = zip(*net.named_parameters())

    def model(backend):
        def inverse(x, fi, psi, t, *weights):
            with omnifast.backend(backend):
                return torch.func.functional_call(net, dict(zip(names, weights)),
                                                  (x, fi, psi, t), {"inverse": True})

        return inverse

    calls = record_calls(monkeypatch, ops_bijection.AffineFunction, "apply")
    assert_parity(model("auto"), model("torch"), (x, fi, psi, t, *weights), [x, *weights],
                  ["x", *names], num_points=300, what="InvertibleMap")
    assert calls, "the automatic backend did not run the fused affine pre-layer"


def test_affine_save_hidden_env_parsing():
    base = dict(ops_bijection.CPU_AFFINE_SAVE_HIDDEN)
    name = "OMNIFAST_CPU_AFFINE_SAVE_HIDDEN"
    parse = ops_bijection._save_hidden_from_env
    assert parse("3", base, name) == {"fp32": 3, "bf16": 3}
    assert parse("bf16=1", base, name) == {**base, "bf16": 1}
    with pytest.raises(ValueError, match=name):
        parse("fp16=1", base, name)
