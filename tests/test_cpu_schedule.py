"""The fused CPU kernels share their point tiles dynamically (threads claim groups of tiles), yet
their weight gradients must not depend on which thread ran which group: each group accumulates
into its own slot. Run each backward many times on 2 threads while another process competes for
the cores (so the threads get uneven time and the groups go to different threads from run to
run) and require every run to give the same bits."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from test_affine import make_inputs as affine_inputs
from test_affine import make_weights as affine_weights
from test_bijection import make_inputs as coupling_inputs
from test_bijection import make_params as coupling_params
from test_gabor import make_net, make_x

import omnifast
from omnifast import ops
from omnifast.dispatch import available_backends

pytestmark = pytest.mark.skipif("cpu" not in available_backends("coupling_stack"),
                                reason="the C++ extension is not built")

RUNS = 12
# A busy loop that ends when its parent does (a crashed run leaves no spinner behind).
SPIN_UNTIL_ORPHANED = ("import os, sys\nparent = int(sys.argv[1])\n"
                       "while os.getppid() == parent:\n    for _ in range(10**6): pass")
COORDS = (1, 0, 2, 1, 0, 2)
THREADS = 2


@pytest.fixture(scope="module")
def competitor():
    """A process spinning on one core for the duration of the module's tests."""
    proc = subprocess.Popen([sys.executable, "-c", SPIN_UNTIL_ORPHANED, str(os.getpid())])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def _gradients(fn, leaves):
    """Every run's gradients of fn() with respect to leaves, under one fixed upstream gradient."""
    runs = []
    for _ in range(RUNS):
        y = fn()
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
        runs.append(torch.autograd.grad(y, leaves, dy))
    return runs


def _assert_same_bits(runs, names):
    for r, grads in enumerate(runs[1:], start=1):
        for name, a, b in zip(names, runs[0], grads):
            assert torch.equal(a, b), f"d{name} differs between run 0 and run {r}"


def test_coupling_backward_is_schedule_independent(competitor, two_threads):
    params = coupling_params(H=32, P=16, C=8)
    # 40 tiles of 512 points: several groups per thread
    x, frame_idx, codes = coupling_inputs(40 * 512 - 7, 5, params)
    leaves = [x, codes, params.proj_w, params.w_in, *params.w_hidden, params.w_out]

    def fn():
        with omnifast.backend("cpu"):
            return ops.coupling_stack(x, frame_idx, codes, params, COORDS, 4, inverse=False)

    _assert_same_bits(_gradients(fn, leaves), ["x", "codes", "proj_w", "w_in", "w_h0", "w_h1",
                                               "w_out"])


def test_affine_backward_is_schedule_independent(competitor, two_threads):
    ws, bs = affine_weights(H=32, dtype=torch.float32)
    x, t = affine_inputs(40 * 512 - 7)

    def fn():
        with omnifast.backend("cpu"):
            return ops.affine(x, t, ws, bs, 4, inverse=True)

    _assert_same_bits(_gradients(fn, [x, t, *ws, *bs]),
                      ["x", "t"] + [f"w{i}" for i in range(len(ws))]
                      + [f"b{i}" for i in range(len(bs))])


def test_gabor_backward_is_schedule_independent(competitor, two_threads):
    net = make_net(H=32)
    x = make_x((40 * 128 - 7, 3))
    leaves = [x, *net.parameters()]

    def fn():
        with omnifast.backend("cpu"):
            return ops.gabor_net(x, net.params())

    _assert_same_bits(_gradients(fn, leaves), ["x"] + [n for n, _ in net.named_parameters()])


def test_one_thread_and_two_agree(two_threads):
    """The groups split the same sums differently: equal to rounding, not to the bit."""
    params = coupling_params(H=32, P=16, C=8)
    x, frame_idx, codes = coupling_inputs(9 * 512 + 3, 5, params)
    leaves = [x, codes, params.w_in, *params.w_hidden]

    def grads():
        with omnifast.backend("cpu"):
            y = ops.coupling_stack(x, frame_idx, codes, params, COORDS, 4, inverse=True)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
        return torch.autograd.grad(y, leaves, dy)

    two = grads()
    torch.set_num_threads(1)
    one = grads()
    for a, b in zip(two, one):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())
