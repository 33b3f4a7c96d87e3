"""The reference ops: hand-computed values and float64 gradchecks."""

import math

import pytest
import torch

from omnifast.reference import CouplingParams, affine_ref, composite_ref, coupling_stack_ref


def test_composite_hand_computed():
    sigma = torch.tensor([[0.5, 1.0, 2.0]], dtype=torch.float64)
    values = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 3.0]]], dtype=torch.float64)
    a = [1 - math.exp(-0.5), 1 - math.exp(-1.0), 1 - math.exp(-2.0)]
    t1 = 1 - a[0] + 1e-10
    t2 = t1 * (1 - a[1] + 1e-10)
    w = [a[0], a[1] * t1, a[2] * t2]
    out, weights = composite_ref(sigma, values)
    assert torch.allclose(weights[0], torch.tensor(w, dtype=torch.float64), rtol=1e-12)
    expected = [w[0] + 2 * w[2], w[1] + 3 * w[2]]
    assert torch.allclose(out[0], torch.tensor(expected, dtype=torch.float64), rtol=1e-12)
    assert weights.sum() < 1  # no normalisation


def test_composite_mask_near_and_shapes():
    sigma = torch.full((2, 3, 10), 0.7)
    values = torch.rand(2, 3, 10, 4)
    out, w = composite_ref(sigma, values, num_masked_near=2)
    assert out.shape == (2, 3, 4) and w.shape == (2, 3, 10)
    assert (w[..., :2] == 0).all() and (w[..., 2] == 1 - math.exp(-0.7)).all()
    with pytest.raises(ValueError, match="values must be"):
        composite_ref(sigma, torch.rand(2, 3, 9, 4))


def test_composite_epsilon_keeps_transmittance_positive():
    sigma = torch.tensor([[200.0, 200.0, 1.0]])
    _, w = composite_ref(sigma, torch.ones(1, 3, 1))
    # 1 - alpha underflows to 0; the 1e-10 keeps T > 0 behind an opaque sample
    assert w[0, 2] > 0 and w[0, 2] < 1e-9


def test_composite_gradcheck():
    sigma = (torch.rand(3, 5, dtype=torch.float64) * 2).requires_grad_()
    values = torch.rand(3, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, v: composite_ref(s, v), (sigma, values))


def small_params(L=3, P=6, E=18, H=5, C=4, n_hidden=1, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=dtype) * 0.4).requires_grad_()

    return CouplingParams(
        proj_w=r(L, P, E), proj_b=r(L, P), w_in=r(L, H, C + P), b_in=r(L, H),
        w_hidden=tuple(r(L, H, H) for _ in range(n_hidden)),
        b_hidden=tuple(r(L, H) for _ in range(n_hidden)),
        w_out=r(L, 2, H), b_out=r(L, 2),
    )


def test_coupling_round_trip_and_gradcheck():
    p = small_params()
    coords = (1, 0, 2)
    x = torch.rand(7, 3, dtype=torch.float64, requires_grad=True)
    fid = torch.tensor([0, 1, 1, 0, 2, 2, 1])
    codes = torch.randn(3, 3, 4, dtype=torch.float64, requires_grad=True)
    y = coupling_stack_ref(x, fid, codes, p, coords, n_freq=4)
    back = coupling_stack_ref(y, fid, codes, p, coords, n_freq=4, inverse=True)
    assert (back - x).abs().max() < 1e-12
    tensors = (x, codes, p.proj_w, p.w_in, p.w_hidden[0], p.w_out, p.b_out)

    def fn(x_, codes_, proj_w, w_in, w_h, w_out, b_out):
        q = p._replace(proj_w=proj_w, w_in=w_in, w_hidden=(w_h,), w_out=w_out, b_out=b_out)
        return coupling_stack_ref(x_, fid, codes_, q, coords, n_freq=4)

    assert torch.autograd.gradcheck(fn, tensors)

    def fn_inv(x_, codes_, proj_w, w_in, w_h, w_out, b_out):
        q = p._replace(proj_w=proj_w, w_in=w_in, w_hidden=(w_h,), w_out=w_out, b_out=b_out)
        return coupling_stack_ref(x_, fid, codes_, q, coords, n_freq=4, inverse=True)

    assert torch.autograd.gradcheck(fn_inv, tensors)


def test_coupling_clamps_s():
    p = small_params(L=1, n_hidden=0)
    with torch.no_grad():
        p.w_out.zero_()
        p.b_out.copy_(torch.tensor([[50.0, 0.0]]))  # s = 50 -> clamped to 8
    x = torch.ones(2, 3, dtype=torch.float64)
    y = coupling_stack_ref(x, torch.zeros(2, dtype=torch.long), torch.zeros(1, 1, 4,
                           dtype=torch.float64), p, (2,), n_freq=4)
    assert torch.allclose(y[:, 2], torch.full((2,), math.exp(-8.0), dtype=torch.float64))
    assert torch.equal(y[:, :2], x[:, :2])


def test_affine_round_trip_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    sizes = [10, 6, 6, 5]
    ws = [(torch.randn(o, i, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
          for i, o in zip(sizes[:-1], sizes[1:])]
    bs = [(torch.randn(o, generator=g, dtype=torch.float64) * 0.1).requires_grad_()
          for o in sizes[1:]]
    x = torch.rand(9, 3, dtype=torch.float64, requires_grad=True)
    t = torch.rand(9, dtype=torch.float64)
    y = affine_ref(x, t, ws, bs, 4)
    assert torch.equal(y[:, 2], x[:, 2])
    back = affine_ref(y, t, ws, bs, 4, inverse=True)
    assert (back - x).abs().max() < 1e-7  # the 1 + 1e-8 division is not undone exactly
    assert torch.autograd.gradcheck(lambda x_, w0: affine_ref(x_, t, [w0] + ws[1:], bs, 4),
                                    (x, ws[0]))
