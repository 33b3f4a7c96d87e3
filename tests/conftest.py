"""Test configuration shared by every test module.

Without a GPU, Triton kernels run under the interpreter: TRITON_INTERPRET must be set before
triton is imported (triton 3.6 requires that), so it is set here, at collection start.
"""

import dataclasses
import os
import random
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from omnifast.config import ModelConfig, Preset, TrainConfig  # noqa: E402
from omnifast.data.motion import MotionData  # noqa: E402

#: a model and schedule small enough for fits of a few steps in tests
TINY_MODEL = ModelConfig(code_dim=8, code_hidden=16, coupling_hidden=(16, 16, 16), proj_dim=16,
                         use_affine=False, color_hidden=16, num_samples=8)
TINY_TRAIN = TrainConfig(num_iters=6, num_pairs=2, num_pts=16, checkpoint_every=2,
                         cache_every=3, start_interval=2, interval_growth_steps=2,
                         rgb_ramp_steps=2, dist_start=3, dist_ramp_steps=2, lr_decay_steps=4)
TINY = Preset("tiny", TINY_MODEL, TINY_TRAIN)
#: the same with the affine pre-layer (checkpoint layouts, model mapping behaviour)
TINY_AFFINE_MODEL = dataclasses.replace(TINY_MODEL, use_affine=True, affine_hidden=16)


#: the seed every seeded test starts from (the ``seed`` fixture)
SEED = 0


@pytest.fixture
def seed() -> int:
    """Seed torch, numpy's global generator and ``random`` with :data:`SEED`; returns it."""
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    random.seed(SEED)
    return SEED


def texture(h: int, w: int, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """A random smooth RGB texture, uint8 [H, W, 3], using the full 0..255 range."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), sigma)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).round().astype(np.uint8)


def translating(t: int = 6, h: int = 32, w: int = 40, dx: float = 1.0, dy: float = 0.5,
                seed: int = 0, pad: int = 40) -> np.ndarray:
    """A clip uint8 [T, H, W, 3] whose frame k shows a texture moved by (k dx, k dy): the true
    flow i -> j is (j - i)(dx, dy) wherever the texture stays in view."""
    big = texture(h + 2 * pad, w + 2 * pad, seed)
    out = []
    for k in range(t):
        m = np.float32([[1, 0, pad - dx * k], [0, 1, pad - dy * k]])
        out.append(cv2.warpAffine(big, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    return np.stack(out)


def translating_motion(t: int = 5, h: int = 32, w: int = 40, v=(1, 1), seed: int = 0
                       ) -> MotionData:
    """A random texture moving by v = (dx, dy) integer px per frame, with exact flows."""
    rng = np.random.default_rng(seed)
    pad = max(abs(v[0]), abs(v[1])) * t + 2
    big = (rng.random((h + 2 * pad, w + 2 * pad, 3)) * 255).astype(np.uint8)
    frames = np.stack([big[pad - v[1] * k: pad - v[1] * k + h, pad - v[0] * k: pad - v[0] * k + w]
                       for k in range(t)])
    ys, xs = np.mgrid[0:h, 0:w]
    flows = np.zeros((t, t, h, w, 2), np.float32)
    cycle = np.zeros((t, t, h, w), bool)
    for i in range(t):
        for j in range(t):
            if i != j:
                dx, dy = v[0] * (j - i), v[1] * (j - i)
                flows[i, j] = (dx, dy)
                cycle[i, j] = (xs + dx >= 0) & (xs + dx < w) & (ys + dy >= 0) & (ys + dy < h)
    occluded = np.zeros_like(cycle)
    return MotionData(frames, flows, cycle, occluded, cycle.sum((2, 3)).astype(np.int64),
                      cycle.sum(1).astype(np.int32), source="test")


def write_frames(folder: Path, frames: np.ndarray) -> Path:
    """Write frames [T, H, W, 3] (RGB) as a folder of lossless PNGs 000.png, 001.png, ..."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{k:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="session")
def tiny_clip() -> np.ndarray:
    """6 frames of 32x40 moving by (1, 0.5) px per frame (:func:`translating`), read-only."""
    clip = translating()
    clip.setflags(write=False)
    return clip


@pytest.fixture(scope="session")
def tiny_motion(tiny_clip):
    """DIS motion (chained) of :func:`tiny_clip`, computed once per session without the cache."""
    from omnifast.data.flow import compute_motion  # noqa: PLC0415

    return compute_motion(tiny_clip, cache_dir=False, progress=False, workers=2)


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
