"""The thread pool of the fused CPU kernels (csrc/common/tile_pool.h): its threads keep off the
caller's CPU, compute with the caller's flush-to-zero bits, leave the caller's thread settings as
they were, are made only when more than one thread is asked for, and a forked child starts its
own pool."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_bijection import make_inputs, make_params
from test_gabor import make_net, make_x

import omnifast
from omnifast import ops
from omnifast.dispatch import available_backends

pytestmark = pytest.mark.skipif("cpu" not in available_backends("coupling_stack"),
                                reason="the C++ extension is not built")

COORDS = (1, 0, 2, 1, 0, 2)
POINTS = 40 * 512 - 7  # 40 tiles: every thread gets some
SUBNORMAL = 1e-40
POOL_THREAD_NAME = "omnifast-tiles"


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _forward(x, params, frame_idx, codes):
    with omnifast.backend("cpu"), torch.no_grad():
        return ops.coupling_stack(x, frame_idx, codes, params, COORDS, 4, inverse=False)


def _pool_threads() -> list[Path]:
    tasks = Path("/proc/self/task")
    return [t for t in tasks.iterdir() if (t / "comm").read_text().strip() == POOL_THREAD_NAME]


def _allowed_cpus(task: Path) -> int:
    for line in (task / "status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            count = 0
            for part in line.split(":", 1)[1].strip().split(","):
                lo, _, hi = part.partition("-")
                count += int(hi or lo) - int(lo) + 1
            return count
    raise AssertionError(f"no Cpus_allowed_list in {task}/status")


def test_identity_stack_passes_subnormals_unless_the_caller_flushes(two_threads):
    """With zero output layers every coupling layer is y = (x - 0) * exp(-0): a subnormal input
    comes out unchanged, or as zero where the computing thread flushes. The caller's switch alone
    (torch's, this thread only) must reach the pool threads too: every point comes out zero."""
    params = make_params(H=32, P=16, C=8)
    params = params._replace(w_out=torch.zeros_like(params.w_out),
                             b_out=torch.zeros_like(params.b_out))
    _, frame_idx, codes = make_inputs(POINTS, 5, params)
    x = torch.full((POINTS, 3), SUBNORMAL)
    y = _forward(x, params, frame_idx, codes)
    assert torch.equal(y, x) and (y < torch.finfo(torch.float32).tiny).all()
    torch.set_flush_denormal(True)
    try:
        y = _forward(x, params, frame_idx, codes)
    finally:
        torch.set_flush_denormal(False)
    assert torch.count_nonzero(y) == 0


def test_the_callers_thread_count_survives_a_call(two_threads):
    params = make_params(H=32, P=16, C=8)
    x, frame_idx, codes = make_inputs(POINTS, 5, params)
    _forward(x.detach(), params, frame_idx, codes)
    assert torch.get_num_threads() == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_pool_threads_keep_off_one_cpu(two_threads):
    """The pool thread may run on every CPU this process may use but the caller's."""
    params = make_params(H=32, P=16, C=8)
    x, frame_idx, codes = make_inputs(POINTS, 5, params)
    _forward(x.detach(), params, frame_idx, codes)
    pool = _pool_threads()
    assert pool, "two threads asked for, but no pool thread exists"
    allowed = len(os.sched_getaffinity(0))
    assert any(_allowed_cpus(t) == allowed - 1 for t in pool)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_one_thread_makes_no_pool_thread():
    """In a fresh process: one thread computes alone; two start one pool thread."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import torch
        from test_tile_pool import _forward, _pool_threads, POINTS
        from test_bijection import make_inputs, make_params
        params = make_params(H=32, P=16, C=8)
        x, frame_idx, codes = make_inputs(POINTS, 5, params)
        torch.set_num_threads(1)
        _forward(x.detach(), params, frame_idx, codes)
        print(len(_pool_threads()))
        torch.set_num_threads(2)
        _forward(x.detach(), params, frame_idx, codes)
        print(len(_pool_threads()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["0", "1"]


def _gabor(x, net):
    with omnifast.backend("cpu"), torch.no_grad():
        return ops.gabor_net(x, net.params())


def _child_gabor(conn, x, net):
    torch.set_num_threads(2)
    y = _gabor(x, net)
    conn.send((y.numpy().tobytes(), len(_pool_threads())))  # bytes: no shared-memory handover
    conn.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_a_forked_child_computes_with_its_own_pool(two_threads):
    """The parent's pool threads do not exist in a child: the child starts its own, and gets
    the parent's answer. (The GaborNet, whose only parallel work is the pool's: the GNU OpenMP
    runtime itself can hang in a child forked after the parent used its threads.)"""
    net = make_net(H=32)
    x = make_x((40 * 128 - 7, 3)).detach()
    expected = _gabor(x, net)  # the parent's pool now exists
    assert _pool_threads()
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_gabor, args=(child_end, x, net))
    child.start()
    try:
        assert parent_end.poll(120), "the forked child did not finish its kernel call"
        child_bytes, child_pool_threads = parent_end.recv()
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    assert child_bytes == expected.numpy().tobytes()
    assert child_pool_threads == 1
    assert child.exitcode == 0
