"""The shared primitives: bilinear sampling, the in-frame rule, query validation, atomic writes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from omnifast.files import atomic_write, remove_stale_temporaries
from omnifast.pixels import FRAME_MARGIN, bilinear, in_frame
from omnifast.queries import TIME_TOLERANCE, validate_queries

# ------------------------------------------------------------------------------ bilinear

IMG = np.arange(12, dtype=np.float32).reshape(3, 4)  # value = 4 y + x
# (x, y) and the expected value under each border rule, by hand: pixel centres at integers
CASES = [
    # x,    y,    zeros,      clamp
    (0.0, 0.0, 0.0, 0.0),
    (3.0, 2.0, 11.0, 11.0),
    (1.5, 0.5, 3.5, 3.5),
    (0.25, 0.75, 3.25, 3.25),  # 0.25 (row 0) * 0.25 + 4.25 (row 1) * 0.75
    (0.0, 1.0, 4.0, 4.0),
    (-0.5, 0.0, 0.0, 0.0),  # half a pixel out: blends pixel 0 (value 0) with zero / clamps to it
    (3.25, 2.0, 11 * 0.75, 11.0),  # a quarter pixel beyond the last column
    (3.0, 2.5, 11 * 0.5, 11.0),  # half a pixel below the last row
    (-1.0, 0.0, 0.0, 0.0),
    (4.0, 0.0, 0.0, 3.0),  # one pixel beyond: nothing left but padding / the edge value
    (10.0, -10.0, 0.0, 3.0),
]


def _case_arrays(dtype):
    x = np.array([[c[0] for c in CASES]], dtype)
    y = np.array([[c[1] for c in CASES]], dtype)
    return x, y, {"zeros": np.array([[c[2] for c in CASES]]),
                  "clamp": np.array([[c[3] for c in CASES]])}


@pytest.mark.parametrize("border", ["zeros", "clamp"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bilinear_matches_hand_computation(border, dtype):
    x, y, expected = _case_arrays(dtype)
    want = expected[border]
    out = bilinear(IMG, x, y, border=border)  # float32 2-D: cv2; float64: numpy gathers
    assert out.dtype == dtype and out.shape == x.shape
    np.testing.assert_allclose(out, want, atol=1e-5)
    np.testing.assert_allclose(bilinear(IMG, x[0], y[0], border=border), want[0], atol=1e-5)
    t = bilinear(torch.from_numpy(IMG), torch.from_numpy(x), torch.from_numpy(y), border=border)
    assert isinstance(t, torch.Tensor) and t.shape == x.shape
    np.testing.assert_allclose(t.numpy(), want, atol=1e-5)


def test_bilinear_has_no_default_border_and_checks_it():
    with pytest.raises(TypeError):
        bilinear(IMG, np.zeros(1), np.zeros(1))  # the border must be chosen
    with pytest.raises(ValueError, match="border"):
        bilinear(IMG, np.zeros(1), np.zeros(1), border="reflect")
    with pytest.raises(ValueError, match="one shape"):
        bilinear(IMG, np.zeros(2), np.zeros(3), border="zeros")
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        bilinear(np.zeros(4), np.zeros(1), np.zeros(1), border="zeros")


@pytest.mark.parametrize("border", ["zeros", "clamp"])
@pytest.mark.parametrize("channels", [None, 1, 2, 3, 4, 5])
def test_bilinear_paths_agree(border, channels):
    """cv2 (float32, 2-D positions), numpy gathers (float64) and torch give the same samples."""
    rng = np.random.default_rng(channels or 0)
    shape = (17, 23) if channels is None else (17, 23, channels)
    img = rng.normal(0, 5, shape).astype(np.float32)
    x = rng.uniform(-2.5, 25.5, (30, 40)).astype(np.float32)
    y = rng.uniform(-2.5, 19.5, (30, 40)).astype(np.float32)
    x[0, :10] = np.round(x[0, :10])
    x[1, :5], y[2, :5] = 1e6, -1e7  # far outside
    fast = bilinear(img, x, y, border=border)
    ref = bilinear(img, x.astype(np.float64), y.astype(np.float64), border=border)
    tch = bilinear(torch.from_numpy(img), x, y, border=border).numpy()
    assert fast.shape == ref.shape == tch.shape == x.shape + shape[2:]
    assert fast.dtype == np.float32 and ref.dtype == np.float64
    np.testing.assert_allclose(fast, ref, rtol=0, atol=2e-5)
    # grid_sample maps positions to [-1, 1] and back in float32: a little more rounding
    np.testing.assert_allclose(tch, ref, rtol=0, atol=1e-4)
    if border == "zeros":
        assert (ref[1, :5] == 0).all() and (ref[:, :5][2] == 0).all()


def test_bilinear_numpy_edge_cases():
    x = np.array([np.nan, np.inf, -np.inf, 1.0])
    y = np.array([1.0, 1.0, 1.0, np.nan])
    np.testing.assert_array_equal(bilinear(IMG, x, y, border="zeros"), 0.0)
    empty = bilinear(IMG, np.zeros((0, 5)), np.zeros((0, 5)), border="clamp")
    assert empty.shape == (0, 5)
    rgb = np.stack([IMG, 2 * IMG, 3 * IMG], -1)
    out = bilinear(rgb, np.array([1.5]), np.array([0.5]), border="clamp")
    np.testing.assert_allclose(out, [[3.5, 7.0, 10.5]])
    # an explicit arithmetic dtype (float64 positions, float32 weights)
    out32 = bilinear(rgb, np.array([1.5]), np.array([0.5]), border="clamp", dtype=np.float32)
    assert out32.dtype == np.float32
    u8 = bilinear(IMG.astype(np.uint8), np.array([[0.5]], np.float32),
                  np.array([[0.0]], np.float32), border="zeros")
    np.testing.assert_allclose(u8, [[0.5]])
    assert bilinear(torch.zeros(3, 4), torch.zeros(0), torch.zeros(0), border="zeros").shape == (0,)


# ------------------------------------------------------------------------------ in_frame


def test_in_frame_edges():
    h, w = 3, 4
    assert FRAME_MARGIN == 0.5
    x = np.array([-0.5, -0.5001, 0.0, 3.0, 3.5, 3.5001, 1.0, 1.0, 1.0, np.nan])
    y = np.array([0.0, 0.0, -0.5, 2.5, 1.0, 1.0, -0.5001, 2.5001, 2.0, 1.0])
    want = np.array([1, 0, 1, 1, 1, 0, 0, 0, 1, 0], bool)
    np.testing.assert_array_equal(in_frame(x, y, h, w), want)
    got = in_frame(torch.from_numpy(x), torch.from_numpy(y), h, w)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), want)
    # margin 0: the pixel-centre rectangle [0, W-1] x [0, H-1]
    x0 = np.array([0.0, -1e-6, 3.0, 3.0 + 1e-6, 2.0, 2.0])
    y0 = np.array([0.0, 0.0, 2.0, 2.0, 2.0 + 1e-6, -1e-6])
    np.testing.assert_array_equal(in_frame(x0, y0, h, w, margin=0),
                                  [True, False, True, False, False, False])


# ------------------------------------------------------------------------------ queries


def test_validate_queries_accepts_and_snaps():
    q = validate_queries([[0, 1.5, 2.5], [3 + TIME_TOLERANCE / 2, -4.0, 100.0]], 4)
    assert q.dtype == np.float64 and q.shape == (2, 3)
    np.testing.assert_array_equal(q[:, 0], [0.0, 3.0])  # snapped to whole frames
    np.testing.assert_array_equal(q[:, 1:], [[1.5, 2.5], [-4.0, 100.0]])  # positions kept
    np.testing.assert_array_equal(validate_queries(torch.tensor([[1.0, 2.0, 3.0]]), 2),
                                  [[1.0, 2.0, 3.0]])
    assert validate_queries(np.zeros((0, 3), np.float32), 5).shape == (0, 3)


@pytest.mark.parametrize(("queries", "match"), [
    (np.array([[np.nan, 1, 1]]), "NaN or Inf"),
    (np.array([[0, np.inf, 1]]), "NaN or Inf"),
    (np.array([[0, 1, np.nan]]), "NaN or Inf"),
    (np.array([[0.5, 1, 1]]), "whole frame"),
    (np.array([[2.01, 1, 1]]), "whole frame"),
    (np.array([[5, 1, 1]]), "outside the video"),
    (np.array([[-1, 1, 1]]), "outside the video"),
    (np.zeros((2, 2)), r"\[N, 3\]"),
    (np.zeros(3), r"\[N, 3\]"),
    (np.array([["a", "b", "c"]]), "numbers"),
    (np.array([[True, False, True]]), "numbers"),
])
def test_validate_queries_rejects(queries, match):
    with pytest.raises(ValueError, match=match):
        validate_queries(queries, 5)


def test_baselines_and_ground_truth_share_the_validation():
    from omnifast.datasets.synthetic import generate_clip  # noqa: PLC0415
    from omnifast.eval.baselines import BASELINES  # noqa: PLC0415

    video = np.zeros((3, 16, 16, 3), np.uint8)
    for fn in BASELINES.values():
        with pytest.raises(ValueError, match="whole frame"):
            fn(video, np.array([[0.5, 1.0, 1.0]]))
    clip = generate_clip("easy", num_frames=3, height=16, width=16)
    with pytest.raises(ValueError, match="whole frame"):
        clip.ground_truth(np.array([[1.5, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="outside the video"):
        clip.layer_ids(np.array([[3.0, 1.0, 1.0]]))


# ------------------------------------------------------------------------------ atomic writes


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "data.txt"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".data.txt.")
        assert tmp.suffix == ".txt" and not target.exists()
        tmp.write_text("new")
    assert target.read_text() == "new" and _hidden(target.parent) == []
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"newer")
    assert target.read_bytes() == b"newer"


@pytest.mark.parametrize("writer", ["text", "npy", "npz", "torch"])
def test_atomic_write_keeps_the_old_file_when_the_writer_raises(tmp_path, writer):
    target = tmp_path / {"text": "a.json", "npy": "a.npy", "npz": "a.npz", "torch": "a.pt"}[writer]
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(target) as tmp:
        if writer == "text":
            tmp.write_text("half")
        elif writer == "npy":
            np.save(tmp, np.arange(3))
        elif writer == "npz":
            np.savez(tmp, a=np.arange(3))
        else:
            torch.save({"a": 1}, tmp)
        assert tmp.exists()  # the writer wrote the temporary itself, under its suffix
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert _hidden(tmp_path) == []  # the temporary is gone


def test_atomic_write_suffix_for_writers_that_append_one(tmp_path):
    target = tmp_path / "tracks"  # np.savez appends .npz to a name without it
    with atomic_write(target, suffix=".npz") as tmp:
        np.savez(tmp, a=np.arange(3))
    with np.load(target) as z:
        np.testing.assert_array_equal(z["a"], np.arange(3))


def test_atomic_write_directory(tmp_path):
    entry = tmp_path / "cache-entry"
    with pytest.raises(KeyError), atomic_write(entry, directory=True) as tmp:
        assert tmp.is_dir()
        (tmp / "part.npy").write_bytes(b"x")
        raise KeyError("killed")
    assert not entry.exists() and _hidden(tmp_path) == []
    with atomic_write(entry, directory=True) as tmp:
        (tmp / "a.txt").write_text("ours")
    assert (entry / "a.txt").read_text() == "ours"
    # another writer published the entry first: theirs is kept, ours discarded, no error
    with atomic_write(entry, directory=True) as tmp:
        (tmp / "a.txt").write_text("late")
    assert (entry / "a.txt").read_text() == "ours" and _hidden(tmp_path) == []


def test_remove_stale_temporaries(tmp_path):
    dead = tmp_path / ".motion-01.999999999.abcd1234.tmp"  # a killed run's folder
    dead.mkdir()
    (dead / "flows.npy").write_bytes(b"partial")
    dead_file = tmp_path / ".motion-02.999999999.abcd1234.tmp.npz"
    dead_file.write_bytes(b"partial")
    alive = tmp_path / f".motion-03.{os.getpid()}.abcd1234.tmp"  # a run in progress
    alive.mkdir()
    other = tmp_path / ".tracks.npz.999999999.abcd1234.tmp.npz"  # not matching the pattern
    other.write_bytes(b"x")
    keep = tmp_path / ".motion-notes"  # not a temporary at all
    keep.write_text("x")
    removed = remove_stale_temporaries(tmp_path, "motion-*")
    assert sorted(removed) == sorted([dead, dead_file])
    assert alive.is_dir() and other.exists() and keep.exists()
    assert remove_stale_temporaries(tmp_path) == [other]
    assert remove_stale_temporaries(tmp_path / "missing") == []


# ------------------------------------------------------------------------------ one home each

_ROOT = Path(__file__).resolve().parents[1]
_HOMES = {"omnifast/pixels.py", "omnifast/queries.py", "omnifast/files.py"}
_PATTERNS = {
    "a bilinear sampler": re.compile(r"grid_sample\(|cv2\.remap\(|\[\s*y0\s*,\s*x0\s*\]"),
    "an in-frame rule": re.compile(r"[<>]=?\s*\(?(w|h|width|height|self\.width|self\.height)"
                                   r"\s*-\s*(1|0\.5)\b"),
    "a query validator": re.compile(r"must be whole frame|query frames must|"
                                    r"np\.rint\(\w+\[:, 0\]\)"),
    "an atomic writer": re.compile(r"os\.replace\(|os\.rename\(|mkstemp\("),
}


def test_each_primitive_has_one_home():
    offenders = []
    for path in sorted((_ROOT / "omnifast").rglob("*.py")):
        rel = path.relative_to(_ROOT).as_posix()
        if rel in _HOMES:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for what, pat in _PATTERNS.items():
                if pat.search(line):
                    offenders.append(f"{rel}:{n}: {what}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
