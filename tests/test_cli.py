"""The command line end to end, the public API, and every bad input giving a one-line error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import translating, write_frames

import omnifast
from omnifast.cli import EXIT_INTERRUPTED, main
from omnifast.cpuinfo import cpu_flags, cpu_model, cpu_report, math_library_isas, parse_verbose

T, H, W = 4, 32, 40


def make_clip(seed: int = 0) -> np.ndarray:
    """A smooth texture drifting right by 1 px per frame, T frames of H x W."""
    return translating(t=T, h=H, w=W, dx=1.0, dy=0.0, seed=seed)


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, err: str, match: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("omnifast: error: "), err
    assert match.lower() in lines[0].lower(), lines[0]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """These models are tiny: one thread is faster than two and immune to a busy machine."""


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One end-to-end `omnifast fit` of a 4-frame 32x40 clip (3 steps of the cpu preset)."""
    root = tmp_path_factory.mktemp("fit")
    clip = write_frames(root / "clip", make_clip())
    out = root / "out"
    code = main(["fit", str(clip), "--out", str(out), "--iters", "3", "--quiet",
                 "--points", "30"])
    assert code == 0
    return root, out


def test_fit_writes_everything(fitted):
    _, out = fitted
    for name in ("tracker.pt", "checkpoint.pt", "tracks.npz", "tracks.mp4", "depth.mp4",
                 "color.mp4", "contact_sheet.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    data = np.load(out / "tracks.npz")
    n = len(data["query_points"])
    assert 15 <= n <= 60 and data["query_points"].shape == (n, 3)
    assert (data["query_points"][:, 0] == 0).all()
    assert data["tracks"].shape == (n, T, 2) and data["occluded"].shape == (n, T)
    assert data["occluded"].dtype == bool
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] >= H and sheet.shape[1] >= 3 * W
    tracker = omnifast.load_tracker(out)
    assert (tracker.num_frames, tracker.height, tracker.width) == (T, H, W)
    assert tracker.info["steps"] == 3
    assert not [p for p in os.listdir(out) if p.startswith(".")]


def test_track_command(fitted, capsys, tmp_path):
    _, out = fitted
    q = np.array([[0, 5, 6], [3, 10.5, 20], [1, 31, 39]], np.float32)
    np.save(tmp_path / "q.npy", q)
    code, stdout, _ = run_cli(["track", out, "--queries", tmp_path / "q.npy",
                               "--out", tmp_path / "r.npz"], capsys)
    assert code == 0 and "tracked 3 points" in stdout
    r = np.load(tmp_path / "r.npz")
    assert r["tracks"].shape == (3, T, 2) and r["occluded"].shape == (3, T)
    np.testing.assert_allclose(r["tracks"][1, 3], [20, 10.5])
    tracks, occ = omnifast.load_tracker(out / "tracker.pt").track(q)
    np.testing.assert_allclose(r["tracks"], tracks)


@pytest.mark.parametrize("direct", [False, True])
def test_track_command_refined(fitted, capsys, tmp_path, direct):
    root, out = fitted
    clip = make_clip()
    q = np.array([[0, 10, 12], [2, 20.5, 25]], np.float32)
    np.save(tmp_path / "q.npy", q)
    extra = ["--refine-direct"] if direct else []
    code, stdout, _ = run_cli(["track", out, "--queries", tmp_path / "q.npy", "--out",
                               tmp_path / "r.npz", "--refine", root / "clip", *extra], capsys)
    assert code == 0 and "tracked 2 points" in stdout
    r = np.load(tmp_path / "r.npz")
    tracker = omnifast.load_tracker(out / "tracker.pt")
    expect, occ = tracker.track_refined(q, clip, direct_flow_candidates=direct)
    # the command takes Tracker.track_refined's path: the same tracks, bit for bit
    np.testing.assert_array_equal(r["tracks"], expect)
    assert (r["occluded"] == occ).all()


@pytest.mark.parametrize("refine, match", [
    ("short", "fitted clip"),  # a video that is not the fitted clip
    (None, "--refine"),  # --refine-direct with no video to refine against
])
def test_track_command_refine_refusals(fitted, capsys, tmp_path, refine, match):
    _, out = fitted
    np.save(tmp_path / "q.npy", np.array([[0, 10, 12]], np.float32))
    if refine is None:
        extra = ["--refine-direct"]
    else:
        write_frames(tmp_path / refine, make_clip()[:2])
        extra = ["--refine", tmp_path / refine]
    code, _, err = run_cli(["track", out, "--queries", tmp_path / "q.npy", "--out",
                            tmp_path / "r.npz", *extra], capsys)
    assert_one_line_error(code, err, match)
    assert not (tmp_path / "r.npz").exists()


@pytest.mark.parametrize("queries, match", [
    (np.zeros((5, 2), np.float32), "[N, 3]"),
    (np.array([[T, 1, 1]], np.float32), "outside the video"),
    (np.array([[-2, 1, 1]], np.float32), "outside the video"),
])
def test_track_bad_queries(fitted, capsys, tmp_path, queries, match):
    _, out = fitted
    np.save(tmp_path / "q.npy", queries)
    code, _, err = run_cli(["track", out, "--queries", tmp_path / "q.npy",
                            "--out", tmp_path / "r.npz"], capsys)
    assert_one_line_error(code, err, match)
    assert not (tmp_path / "r.npz").exists()


def test_track_bad_files(fitted, capsys, tmp_path):
    _, out = fitted
    np.save(tmp_path / "q.npy", np.zeros((2, 3), np.float32))
    args = ["--queries", tmp_path / "q.npy", "--out", tmp_path / "r.npz"]
    code, _, err = run_cli(["track", tmp_path / "nothing", *args], capsys)
    assert_one_line_error(code, err, "not found")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    code, _, err = run_cli(["track", tmp_path / "corrupt.pt", *args], capsys)
    assert_one_line_error(code, err, "not a readable")
    torch.save({"state": [1, 2, 3]}, tmp_path / "foreign.pt")
    code, _, err = run_cli(["track", tmp_path / "foreign.pt", *args], capsys)
    assert_one_line_error(code, err, "not an omnifast checkpoint")
    (tmp_path / "q.txt").write_text("1 2 3")
    code, _, err = run_cli(["track", out, "--queries", tmp_path / "q.txt",
                            "--out", tmp_path / "r.npz"], capsys)
    assert_one_line_error(code, err, "not a readable .npy")
    code, _, err = run_cli(["track", out, "--queries", tmp_path / "missing.npy",
                            "--out", tmp_path / "r.npz"], capsys)
    assert_one_line_error(code, err, "no such query file")
    assert not (tmp_path / "r.npz").exists()


def _bad_clip(kind: str, root: Path) -> Path:
    if kind == "missing":
        return root / "nope.mp4"
    if kind == "unreadable":
        p = root / "broken.mp4"
        p.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not really a video" * 3)
        return p
    if kind == "one-frame":
        return write_frames(root / "one", make_clip()[:1])
    if kind == "sizes":
        d = write_frames(root / "sizes", make_clip()[:2])
        cv2.imwrite(str(d / "002.png"), np.zeros((10, 12, 3), np.uint8) + 80)
        return d
    if kind == "black":
        return write_frames(root / "black", np.zeros((3, H, W, 3), np.uint8))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, match", [
    ("missing", "no such file"),
    ("unreadable", "broken.mp4"),
    ("one-frame", "at least 2 frames"),
    ("sizes", "size"),
    ("black", "black"),
])
def test_fit_bad_videos(capsys, tmp_path, kind, match):
    src = _bad_clip(kind, tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(["fit", src, "--out", out, "--iters", "1", "--quiet"], capsys)
    assert_one_line_error(code, err, match)
    assert not (out / "tracker.pt").exists() and not (out / "tracks.npz").exists()


def test_nan_in_supplied_flows(capsys, tmp_path):
    from omnifast.data import compute_motion, write_omnimotion_folder

    motion = compute_motion(make_clip(), cache_dir=False, progress=False)
    seq = write_omnimotion_folder(motion, tmp_path / "seq")
    flow_file = sorted((seq / "raft_exhaustive").glob("*.npy"))[3]
    flow = np.load(flow_file)
    flow[2, 3, 0] = np.nan
    np.save(flow_file, flow)
    out = tmp_path / "out"
    code, _, err = run_cli(["fit", seq, "--out", out, "--iters", "1", "--quiet"], capsys)
    assert_one_line_error(code, err, "NaN")
    assert not (out / "tracker.pt").exists()
    bad = motion
    bad.flows = np.array(motion.flows)
    bad.flows[1, 0, 0, 0, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        omnifast.fit(bad, iters=1, progress=False)


def test_resume_with_foreign_checkpoint(fitted, capsys, tmp_path):
    root, out = fitted
    other = write_frames(tmp_path / "other", make_clip(seed=5))
    target = tmp_path / "out"
    target.mkdir()
    (target / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes())
    code, _, err = run_cli(["fit", other, "--out", target, "--iters", "2", "--resume",
                            "--quiet"], capsys)
    assert_one_line_error(code, err, "another fit")
    (target / "checkpoint.pt").write_bytes(b"garbage")
    code, _, err = run_cli(["fit", other, "--out", target, "--iters", "2", "--resume",
                            "--quiet"], capsys)
    assert_one_line_error(code, err, "not a readable checkpoint")


def _fit_with_a_checkpoint(clip, out) -> subprocess.Popen:
    """A 400-step `omnifast fit` of clip into out, running, once it has written a checkpoint
    (killed if it has not within 2 minutes)."""
    args = ["fit", str(clip), "--out", str(out), "--iters", "400", "--checkpoint-every", "2",
            "--quiet", "--points", "10"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, "-m", "omnifast", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    if not ckpt.exists():
        proc.kill()
        proc.wait()
        pytest.fail("no checkpoint: " + proc.stderr.read().decode())
    return proc


def test_killed_fit_resumes(tmp_path, capsys):
    """kill -9 a running `omnifast fit`, then `--resume` finishes it from the checkpoint."""
    clip = write_frames(tmp_path / "clip", make_clip())
    out = tmp_path / "out"
    proc = _fit_with_a_checkpoint(clip, out)
    try:
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = out / "checkpoint.pt"
    step = torch.load(ckpt, weights_only=False)["step"]
    assert 2 <= step < 400
    assert not (out / "tracker.pt").exists()
    total = step + 2
    code, stdout, err = run_cli(["fit", clip, "--out", out, "--iters", total, "--resume",
                                 "--quiet", "--points", "10"], capsys)
    assert code == 0, err
    assert f"fitted {total} steps" in stdout
    assert torch.load(ckpt, weights_only=False)["step"] == total
    assert omnifast.load_tracker(out).info["steps"] == total


def test_info_lists_backends(capsys):
    code, stdout, _ = run_cli(["info"], capsys)
    assert code == 0
    assert "omnifast " in stdout and "torch " in stdout
    assert "op composite on cpu:" in stdout and "torch   available" in stdout


def test_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit"])
    assert exc.value.code == 2
    capsys.readouterr()
    code, _, err = run_cli(["fit", "x.mp4", "--out", "o", "--iters", "-3"], capsys)
    assert code == 2 and "no such file" in err  # the input is checked first


def test_tensorboard_is_optional(tmp_path, capsys):
    from omnifast.api import tensorboard_writer

    try:
        import torch.utils.tensorboard  # noqa: F401
    except Exception:  # noqa: BLE001
        assert tensorboard_writer(tmp_path) is None
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "tensorboard is not installed" in err[0]
    else:
        writer = tensorboard_writer(tmp_path)
        writer.add_scalar("x", 1.0, 1)
        writer.close()
        assert any(tmp_path.iterdir())
    assert tensorboard_writer(None) is None


def test_demo_helpers():
    from omnifast.demo import median_error, moving_texture_clip

    video, truth = moving_texture_clip(num_frames=3, height=16, width=20)
    assert video.shape == (3, 16, 20, 3) and video.dtype == np.uint8
    assert truth(2.0, 3.0, 2) == (4.0, 4.0)
    gt = np.zeros((2, 3, 2))
    pred = gt + np.array([3.0, 4.0])
    occ = np.array([[False, False, True], [False, True, True]])
    assert median_error(pred, gt, occ) == 5.0


def test_public_api_exports():
    """Each lazily exported name resolves to the object of its home module."""
    import importlib  # noqa: PLC0415

    homes = {"fit": "omnifast.api", "fit_many": "omnifast.many", "load_tracker": "omnifast.track",
             "Tracker": "omnifast.track", "load_video": "omnifast.data.video"}
    for name, module in homes.items():
        assert name in omnifast.__all__, name
        assert getattr(omnifast, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="no attribute 'not_exported'"):
        omnifast.not_exported  # noqa: B018


def test_info_names_the_cpu_and_the_math_libraries_code_paths(capsys):
    code, stdout, _ = run_cli(["info"], capsys)
    assert code == 0
    assert f"cpu: {cpu_model()}" in stdout
    for lib in ("aten", "onemkl", "onednn"):
        assert f"{lib} code path: " in stdout


def test_restricted_onednn_isa_is_reported(monkeypatch):
    if "avx2" not in cpu_flags():
        pytest.skip("the CPU has no AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "AVX2" in math_library_isas()["onednn"]
    assert any("ONEDNN_MAX_CPU_ISA=AVX2" in line for line in cpu_report())


def test_parse_verbose_lines_of_both_vendors():
    intel = ("MKL_VERBOSE oneMKL 2024.0 Update 2 Product build 20240605 for Intel(R) 64 "
             "architecture Intel(R) Advanced Vector Extensions 512 (Intel(R) AVX-512) with "
             "support of Intel(R) Deep Learning Boost (Intel(R) DL Boost), EVEX-encoded AES and "
             "Intel(R) Advanced Matrix Extensions (Intel(R) AMX) with INT8 and bfloat16, Lnx "
             "2.00GHz lp64 gnu_thread\n"
             "onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with float16, Intel DL Boost and "
             "bfloat16 support and Intel AMX with bfloat16 and 8-bit integer support\n")
    parsed = parse_verbose(intel)
    assert parsed["onemkl"].startswith("2024.0 Update 2")
    assert "Intel(R) Advanced Vector Extensions 512" in parsed["onemkl"]
    assert parsed["onednn"].endswith("8-bit integer support")
    assert parse_verbose("")["onednn"].startswith("unknown")


def test_sigterm_stops_a_fit_like_ctrl_c(tmp_path):
    """`kill` (SIGTERM) on a running `omnifast fit` saves the checkpoint and exits with the
    interrupted status, as Ctrl-C does."""
    clip = write_frames(tmp_path / "clip", make_clip())
    out = tmp_path / "out"
    proc = _fit_with_a_checkpoint(clip, out)
    ckpt = out / "checkpoint.pt"
    try:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode()
    assert code == EXIT_INTERRUPTED, err
    assert "interrupted" in err
    step = torch.load(ckpt, weights_only=False)["step"]
    assert 2 <= step < 400
    assert not (out / "tracker.pt").exists()


def test_the_command_line_fits_at_the_presets_resolution(tmp_path, monkeypatch, capsys):
    """`omnifast fit` shrinks frames to the preset's max_side unless --max-side says otherwise
    (0: full resolution); an OmniMotion folder with its own flows keeps them."""
    import omnifast.api
    from omnifast.api import command_line_max_side
    from omnifast.config import get_preset

    cpu, gpu = get_preset("cpu"), get_preset("gpu")
    assert cpu.max_side == 256 and gpu.max_side is None
    assert command_line_max_side(None, cpu) == 256
    assert command_line_max_side(0, cpu) is None
    assert command_line_max_side(480, cpu) == 480
    assert command_line_max_side(None, gpu) is None
    for bad in (-1, 1):
        with pytest.raises(ValueError, match="max_side"):
            command_line_max_side(bad, cpu)
    supplied = tmp_path / "seq"
    (supplied / "color").mkdir(parents=True)
    (supplied / "raft_exhaustive").mkdir()
    assert command_line_max_side(None, cpu, supplied) is None
    assert command_line_max_side(128, cpu, supplied) == 128

    asked = []

    def fake_fit(video, **kw):
        asked.append(kw["max_side"])
        raise ValueError("stopped before fitting")

    monkeypatch.setattr(omnifast.api, "fit", fake_fit)
    frames = tmp_path / "frames"
    write_frames(frames, translating(3, 40, 48))
    for argv, want in (([], 256), (["--max-side", "0"], None), (["--max-side", "96"], 96)):
        assert main(["fit", str(frames), "--out", str(tmp_path / "out"), "--quiet", *argv]) != 0
        assert asked[-1] == want
    assert "stopped before fitting" in capsys.readouterr().err
