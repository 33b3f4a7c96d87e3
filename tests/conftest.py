"""Test configuration shared by every test module.

Without a GPU, Triton kernels run under the interpreter: TRITON_INTERPRET must be set before
triton is imported (triton 3.6 requires that), so it is set here, at collection start.
"""

import os

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from omnifast.config import ModelConfig, Preset, TrainConfig  # noqa: E402

#: a model and schedule small enough for fits of a few steps in tests
TINY_MODEL = ModelConfig(code_dim=8, code_hidden=16, coupling_hidden=(16, 16, 16), proj_dim=16,
                         use_affine=False, color_hidden=16, num_samples=8)
TINY_TRAIN = TrainConfig(num_iters=6, num_pairs=2, num_pts=16, checkpoint_every=2,
                         cache_every=3, start_interval=2, interval_growth_steps=2,
                         rgb_ramp_steps=2, dist_start=3, dist_ramp_steps=2, lr_decay_steps=4)
TINY = Preset("tiny", TINY_MODEL, TINY_TRAIN)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float,
                 name: str = "tensor") -> None:
    """allclose with a verbose message: how many differ, the worst index, both values."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != " \
                                           f"{tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{name}: NaN pattern differs ({int(nan_a.sum())} vs " \
                                      f"{int(nan_e.sum())} NaNs)"
    a, e = torch.where(nan_a, 0.0, a), torch.where(nan_e, 0.0, e)
    diff = (a - e).abs()
    bad = diff > atol + rtol * e.abs()
    if bad.any():
        worst = int((diff - rtol * e.abs()).flatten().argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {a.numel()} elements differ beyond rtol={rtol}, "
            f"atol={atol}; worst at {idx}: got {a[idx].item():.8g}, expected {e[idx].item():.8g}"
        )


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread (tiny models: faster, and immune to load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def close():
    return assert_close


def saved_bytes_per_point(fn, num_points: int) -> int:
    """Bytes of the per-point tensors (those with `num_points` in their shape, not the weights)
    that autograd saves for the backward while `fn()` runs."""
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if num_points in t.shape:
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved)


def record_calls(monkeypatch, owner, name: str, record=lambda *args, **kwargs: True) -> list:
    """Wrap ``owner.name`` so that each call appends ``record(*args, **kwargs)`` to the returned
    list, then runs the original (restored by ``monkeypatch`` after the test)."""
    calls = []
    original = getattr(owner, name)

    def recording(*args, **kwargs):
        calls.append(record(*args, **kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return calls
