"""Parity of the fused CPU GaborNet with the reference (omnifast.reference.gabor_net_ref).

Small widths keep the suite fast (H = 32, 2 hidden linears); the colour network's widths are
exercised by benchmarks/bench_train_step.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, saved_bytes_per_point

import omnifast
from omnifast import ops
from omnifast.dispatch import available_backends, resolve
from omnifast.model.gabor import GaborNet
from omnifast.ops import gabor as ops_gabor
from omnifast.reference.gabor import gabor_net_ref


def _unavailable() -> str | None:
    return available_backends("gabor_net", "cpu", torch.float32)["cpu"]


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))


def make_net(D=3, H=32, O=4, n_layers=2, dtype=torch.float32, seed=0, input_scale=256.0):
    torch.manual_seed(seed)
    return GaborNet(D, H, O, n_layers=n_layers, input_scale=input_scale).to(dtype)


def make_x(shape, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * 4 - 2).to(dtype).requires_grad_()


def leaves(x, net):
    return [x, *net.parameters()]


def names(net):
    return ["x"] + [n for n, _ in net.named_parameters()]


def run(backend, x, net):
    with omnifast.backend(backend):
        return ops.gabor_net(x, net.params())


def check_grads(y, y_ref, x, net, rtol=1e-4, rel_atol=2e-5, what=""):
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
    g = torch.autograd.grad(y, leaves(x, net), dy)
    g_ref = torch.autograd.grad(y_ref, leaves(x, net), dy)
    for name, a, e in zip(names(net), g, g_ref):
        assert_close(a, e, rtol=rtol, atol=rel_atol * (e.abs().max().item() + 1e-6),
                     name=f"{what} d{name}")


@pytest.mark.parametrize("shape", [(1, 3), (300, 3), (2, 5, 13, 3)],
                         ids=["1", "300", "2x5x13"])
def test_values_and_gradients_match_reference(shape):
    """One point, two full tiles of 128 and a partial one, leading dimensions."""
    net = make_net()
    x = make_x(shape)
    y_ref = gabor_net_ref(x, net.params())
    y = run("cpu", x, net)
    assert_close(y, y_ref, rtol=1e-4, atol=1e-5 * y_ref.abs().max().item(), name="y")
    check_grads(y, y_ref, x, net, what=str(shape))


def test_other_widths():
    """One input and no hidden linear (the smallest net), many outputs."""
    for D, O, n_layers in ((1, 20, 0), (2, 3, 1)):
        net = make_net(D=D, H=24, O=O, n_layers=n_layers, seed=D)
        x = make_x((150, D), seed=D)
        y_ref = gabor_net_ref(x, net.params())
        y = run("cpu", x, net)
        # with one filter of one input the sine arguments reach ~1e3, whose fp32 rounding
        # (~1e-4) both sides carry in a different summation order
        assert_close(y, y_ref, rtol=1e-4, atol=1e-4 * y_ref.abs().max().item(), name=f"D{D} y")
        check_grads(y, y_ref, x, net, rtol=1e-3, rel_atol=1e-4, what=f"D{D}")


def test_empty_input():
    net = make_net()
    x = make_x((0, 3))
    y = run("cpu", x, net)
    assert y.shape == (0, 4)
    (y.sum() + 0.0).backward()
    assert net.output_linear.weight.grad is not None
    assert torch.count_nonzero(net.output_linear.weight.grad) == 0


def test_gradcheck_float64():
    net = make_net(H=4, O=2, n_layers=1, dtype=torch.float64, seed=3, input_scale=3.0)
    x = make_x((6, 3), dtype=torch.float64, seed=4)
    # gradcheck perturbs its inputs in place, so the net sees the perturbed parameters
    assert torch.autograd.gradcheck(lambda x, *ps: run("cpu", x, net),
                                    (x, *net.parameters()), eps=1e-6, atol=1e-6)


def _rel_err(a, e):
    return ((a.double() - e.double()).norm() / e.double().norm().clamp_min(1e-30)).item()


def test_bf16_error_at_most_twice_torch_bf16():
    net = make_net(seed=11)
    x = make_x((300, 3), seed=12)
    dy = torch.randn(300, 4, generator=torch.Generator().manual_seed(13))
    lv = leaves(x, net)
    y32 = gabor_net_ref(x, net.params())
    g32 = torch.autograd.grad(y32, lv, dy)
    with omnifast.matmul_precision("bf16"):
        ytb = gabor_net_ref(x, net.params())
        gtb = torch.autograd.grad(ytb, lv, dy)
        y = run("cpu", x, net)
        g = torch.autograd.grad(y, lv, dy)
    torch_err = _rel_err(ytb, y32)
    assert torch_err > 1e-5, "the reference did not run in bf16"
    assert _rel_err(y, y32) <= 2 * torch_err, (
        f"y: bf16 error {_rel_err(y, y32):.3g} vs torch bf16 {torch_err:.3g}")
    for name, a, t, e in zip(names(net), g, gtb, g32):
        ours, theirs = _rel_err(a, e), _rel_err(t, e)
        assert ours <= 2 * theirs + 1e-6, f"d{name}: bf16 error {ours:.3g} vs torch {theirs:.3g}"


def test_backward_saves_inputs_and_linear_outputs():
    """The fused backward keeps x and the 2 hidden linears' outputs (64 wide) per point."""
    net = make_net(H=64)
    M = 2000
    x = make_x((M, 3))
    fused = saved_bytes_per_point(lambda: run("cpu", x, net), M)
    assert fused == M * (3 + 2 * 64) * 4, fused / M
    ref = saved_bytes_per_point(lambda: run("torch", x, net), M)
    assert ref / M > 10 * 64 * 4


def test_auto_dispatch_prefers_fused_cpu_and_falls_back():
    name, _ = resolve("gabor_net", torch.device("cpu"), torch.float32)
    assert name == "cpu"
    name, _ = resolve("gabor_net", torch.device("cpu"), torch.bfloat16)
    assert name == "torch"
    with omnifast.backend("cpu"), pytest.raises(omnifast.BackendUnavailableError, match="float"):
        resolve("gabor_net", torch.device("cpu"), torch.float16)


def test_module_uses_fused_path(monkeypatch):
    net = make_net()
    x = make_x((100, 3))
    calls = []
    orig = ops_gabor.GaborNetFunction.apply
    monkeypatch.setattr(ops_gabor.GaborNetFunction, "apply",
                        lambda *a: calls.append(1) or orig(*a))
    y = net(x)
    assert calls, "the automatic backend did not run the fused GaborNet"
    with omnifast.backend("torch"):
        y_ref = net(x)
    assert_close(y, y_ref, rtol=1e-4, atol=1e-5 * y_ref.abs().max().item(), name="GaborNet")
