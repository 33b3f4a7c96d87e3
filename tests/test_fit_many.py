"""Many videos on Ray (`omnifast.fit_many`, `omnifast fit-many`) and the CPU runtime settings.

One local Ray (2 CPUs, no dashboard) is started for the whole module; the fits use a tiny
preset and a few steps on 4-frame 24x32 generated clips.
"""

from __future__ import annotations

import _thread
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, record_calls, write_frames

import omnifast
from omnifast import many, runtime
from omnifast.cli import main
from omnifast.config import Preset
from omnifast.datasets.synthetic import generate_clip

#: long enough to be stopped in the middle (a kill, a Ctrl-C), checkpoints every 2 steps
LONG = TINY.replace(num_iters=600, cache_every=200)
SEED = 3
ROOT = Path(__file__).resolve().parents[1]


def write_clip(folder: Path, seed: int, frames: int = 4) -> Path:
    """A generated 24x32 clip as a folder of PNG frames (lossless: every reader sees the same)."""
    clip = generate_clip("easy", num_frames=max(frames, 2), height=24, width=32, seed=seed)
    return write_frames(folder, clip.video[:frames])


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_params(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), f"{k}: max |diff| " \
            f"{(got[k].double() - expected[k].double()).abs().max().item():.3g}"


def single_process_fit(video: Path, preset: Preset) -> dict[str, torch.Tensor]:
    """The parameters of an uninterrupted in-process fit (1 thread, like each Ray task)."""
    tracker = omnifast.fit(str(video), preset=preset, seed=SEED, progress=False, threads=1)
    return params(tracker.model)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module: 2 CPUs, no dashboard (its start-up is paid once)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    good = [write_clip(root / f"clip{k}", seed=k) for k in range(3)]
    bad = [write_clip(root / "oneframe", seed=9, frames=1), root / "missing.mp4"]
    return good, bad


@pytest.fixture(scope="module")
def first_run(ray_local, clips, tmp_path_factory):
    good, bad = clips
    out = tmp_path_factory.mktemp("many")
    results = omnifast.fit_many([*good, *bad], out, preset=TINY, seed=SEED, pictures=False,
                                progress=False)
    return out, results


# ------------------------------------------------------------------------------ on Ray
def test_clips_match_single_process_fits(first_run, clips):
    out, results = first_run
    good, _ = clips
    by_name = {r.name: r for r in results}
    for video in good:
        r = by_name[video.name]
        assert r.status == "done" and r.error == "" and r.steps == TINY.train.num_iters, r
        assert r.attempts == 1 and not r.skipped and r.resumed_from == 0
        assert Path(r.outputs["tracker"]).is_file() and Path(r.outputs["tracks"]).is_file()
        tracker = omnifast.load_tracker(out / video.name)
        assert tracker.info["threads"] == 1 and tracker.info["seed"] == SEED
        assert_same_params(params(tracker.model), single_process_fit(video, TINY))


def test_bad_clips_are_reported_once_and_the_rest_finish(first_run, clips):
    _, results = first_run
    by_name = {r.name: r for r in results}
    one, missing = by_name["oneframe"], by_name["missing"]
    for r in (one, missing):
        assert r.status == "failed" and r.attempts == 1 and r.steps == 0, r
        assert "\n" not in r.error and not r.outputs
    assert "at least 2 frames" in one.error
    assert "no such file" in missing.error
    assert sum(r.status == "done" for r in results) == 3


def test_summary_has_every_row(first_run, clips):
    out, results = first_run
    rows = read_csv(out / "summary.csv")
    assert [r["name"] for r in rows] == ["clip0", "clip1", "clip2", "oneframe", "missing"]
    assert tuple(rows[0]) == many.CSV_COLUMNS
    assert [r["status"] for r in rows] == ["done"] * 3 + ["failed"] * 2
    assert all(float(r["final_loss"]) > 0 for r in rows[:3])
    assert rows[0]["tracker"].endswith("clip0/tracker.pt") and rows[4]["error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"done": 3, "failed": 2, "interrupted": 0, "skipped": 0}
    assert [v["name"] for v in summary["videos"]] == [r["name"] for r in rows]
    table = many.format_table(results)
    assert table.splitlines()[2].startswith("oneframe") or table.splitlines()[2].startswith(
        "missing")  # failures first
    assert table.splitlines()[-1] == "3 of 5 done, 2 failed"


def test_rerun_skips_finished_videos(first_run, clips):
    out, _ = first_run
    good, bad = clips
    stamps = {v.name: (out / v.name / "tracker.pt").stat().st_mtime_ns for v in good}
    again = omnifast.fit_many([*good, *bad], out, preset=TINY, seed=SEED, pictures=False,
                              progress=False)
    by_name = {r.name: r for r in again}
    for video in good:
        assert by_name[video.name].skipped and by_name[video.name].status == "done"
        assert (out / video.name / "tracker.pt").stat().st_mtime_ns == stamps[video.name]
    assert by_name["oneframe"].status == "failed" and not by_name["oneframe"].skipped
    rows = read_csv(out / "summary.csv")
    assert [r["skipped"] for r in rows] == ["True"] * 3 + ["False"] * 2
    # other options are another fit: not skipped (it resumes from, and checks, the checkpoint)
    other = omnifast.fit_many(good[:1], out, preset=TINY, seed=SEED + 1, pictures=False,
                              progress=False)
    assert other[0].status == "failed" and "another fit" in other[0].error


@pytest.fixture(scope="module")
def long_reference(clips):
    return single_process_fit(clips[0][0], LONG)


def _wait_for_checkpoint(folder: Path, timeout: float = 120.0) -> dict:
    """Wait until the fit in ``folder`` wrote a checkpoint; returns its state file."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = many._read_json(folder / many.STATE_NAME) or {}
        if state.get("running") and (folder / "checkpoint.pt").exists():
            return state
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint in {folder} after {timeout} s")


def test_killed_worker_is_retried_and_resumes(ray_local, clips, tmp_path, long_reference):
    video = clips[0][0]
    folder = tmp_path / video.name
    killed = {}

    def kill_the_worker():
        state = _wait_for_checkpoint(folder)
        os.kill(state["pid"], signal.SIGKILL)
        killed["pid"] = state["pid"]

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    results = omnifast.fit_many([video], tmp_path, preset=LONG, seed=SEED, pictures=False,
                                progress=False)
    killer.join(10)
    r = results[0]
    assert killed, "the worker was never killed"
    assert r.status == "done" and r.attempts == 2 and r.steps == LONG.train.num_iters, r
    assert 2 <= r.resumed_from < LONG.train.num_iters
    assert_same_params(params(omnifast.load_tracker(folder).model), long_reference)


def test_ctrl_c_saves_checkpoints_and_a_rerun_resumes(ray_local, clips, tmp_path,
                                                      long_reference):
    video = clips[0][0]
    folder = tmp_path / video.name

    pressed = []

    def press_ctrl_c():
        pressed.append(_wait_for_checkpoint(folder))
        _thread.interrupt_main()

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    try:
        returned = omnifast.fit_many([video], tmp_path, preset=LONG, seed=SEED, pictures=False,
                                     progress=False)
    except KeyboardInterrupt as e:
        interrupted = e
    else:
        pytest.fail(f"fit_many returned without the interrupt (pressed after: {pressed}): "
                    f"{returned}")
    assert isinstance(interrupted, many.FitManyInterrupted)
    r = interrupted.results[0]
    step = torch.load(folder / "checkpoint.pt", weights_only=False)["step"]
    assert r.status == "interrupted" and 2 <= r.steps == step < LONG.train.num_iters, r
    assert not (folder / "tracker.pt").exists()
    assert read_csv(tmp_path / "summary.csv")[0]["status"] == "interrupted"
    again = omnifast.fit_many([video], tmp_path, preset=LONG, seed=SEED, pictures=False,
                              progress=False)
    assert again[0].status == "done" and again[0].resumed_from == step
    assert_same_params(params(omnifast.load_tracker(folder).model), long_reference)


def test_cli_fit_many(ray_local, clips, tmp_path, capsys):
    good, bad = clips
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# two clips and a bad one\n{good[1]}\n\n{bad[0]}\n")
    args = ["fit-many", str(good[2]), str(listing), "--out", str(tmp_path / "out"),
            "--iters", "2", "--quiet", "--points", "20", "--max-side", "24"]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("omnifast: error: 1 of 3 videos failed")
    assert "2 of 3 done, 1 failed" in out and "summary.csv" in out
    rows = read_csv(tmp_path / "out" / "summary.csv")
    assert [r["name"] for r in rows] == ["clip2", "clip1", "oneframe"]
    for name in ("clip2", "clip1"):
        for f in ("tracker.pt", "tracks.npz", "tracks.mp4", "contact_sheet.png"):
            assert (tmp_path / "out" / name / f).is_file(), (name, f)
        assert omnifast.load_tracker(tmp_path / "out" / name).info["steps"] == 2
    code = main(args)  # the finished ones are skipped, the bad one tried again
    out, _ = capsys.readouterr()
    assert code == 2 and "2 of 3 done (2 earlier, marked *), 1 failed" in out


# ------------------------------------------------------------------------------ without Ray
def test_fit_many_without_ray_says_how_to_install(clips, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = main(["fit-many", str(clips[0][0]), "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("omnifast: error: Ray is not installed")
    assert 'pip install "omnifast[ray]"' in err[0]


def test_import_omnifast_does_not_import_ray():
    code = ("import sys, omnifast, omnifast.many, omnifast.cli; omnifast.fit_many; "
            "omnifast.cli.build_parser(); print('ray' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_ray_extra_mirrors_requirements_ray():
    import re

    pyproject = (ROOT / "pyproject.toml").read_text()
    extra = re.search(r"^ray = \[(.*)\]", pyproject, re.M).group(1)
    lines = [ln.strip() for ln in (ROOT / "requirements-ray.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert [x.strip().strip('"') for x in extra.split(",")] == lines
    assert "requirements-ray.txt" in (ROOT / "Makefile").read_text()


def test_expand_videos(tmp_path):
    for name in ("b.mp4", "a.mp4", "c.avi"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "list.txt"
    listing.write_text(f"# comment\n../c.avi\n\n  {tmp_path / 'a.mp4'}  \nrel/x.mp4\n")
    got = many.expand_videos([str(tmp_path / "*.mp4"), listing, tmp_path / "nope.mp4"])
    assert got == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4"),
                   str(tmp_path / "sub" / "../c.avi"), str(tmp_path / "sub" / "rel/x.mp4"),
                   str(tmp_path / "nope.mp4")]
    with pytest.raises(ValueError, match="no videos match"):
        many.expand_videos(str(tmp_path / "*.webm"))
    with pytest.raises(ValueError, match="no videos given"):
        many.expand_videos([])


def test_video_names(tmp_path):
    assert many.video_names(["x/dog.mp4", "y/cat/", "frames/fish"]) == ["dog", "cat", "fish"]
    with pytest.raises(ValueError, match="both write to <out>/dog/"):
        many.video_names(["x/dog.mp4", "y/dog.avi"])


def test_options_key_decides_what_is_finished(tmp_path):
    a = many.fit_options(TINY, seed=1)
    assert many.fit_options(TINY, seed=1, checkpoint_every=7)["key"] == a["key"]
    assert many.fit_options(TINY, seed=2)["key"] != a["key"]
    assert many.fit_options(TINY, seed=1, iters=3)["key"] != a["key"]
    folder = tmp_path / "v"
    many._write_json(folder / many.STATE_NAME, {"status": "done", "key": a["key"],
                                                "name": "v", "video": "v.mp4", "steps": 6})
    assert many._finished_earlier(folder, a["key"]) is None  # no tracker.pt
    (folder / "tracker.pt").write_bytes(b"")
    assert many._finished_earlier(folder, a["key"]).skipped
    assert many._finished_earlier(folder, many.fit_options(TINY, seed=2)["key"]) is None
    with pytest.raises(ValueError, match="checkpoint_every"):
        many.fit_options(TINY, checkpoint_every=0)


def test_format_table_fits_one_screen():
    results = [many.VideoResult(name=f"v{k:03d}", video="", status="done", steps=6,
                                fit_seconds=1.5, final_loss=0.25) for k in range(30)]
    results[7] = many.VideoResult(name="broken", video="in/broken.mp4", status="failed",
                                  error="in/broken.mp4: cannot decode " + "x" * 200)
    lines = many.format_table(results, max_rows=10).splitlines()
    assert len(lines) == 2 + 10 + 2 and max(map(len, lines)) <= 100
    assert lines[2].startswith("broken") and lines[2].endswith("...")
    assert "  cannot decode xxx" in lines[2]  # the path is in the row's name already
    assert lines[-2] == "... and 20 more (see summary.csv)"
    assert lines[-1] == "29 of 30 done, 1 failed"


# ------------------------------------------------------------------------------ runtime
def _spin_count(code: str, **env) -> str:
    """GOMP_SPINCOUNT as OpenMP reports it at start-up (0 = passive wait, 300000 = default)."""
    full = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    full.update(env, OMP_DISPLAY_ENV="verbose")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=full, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if "GOMP_SPINCOUNT" in ln]
    assert lines, res.stderr[-2000:]
    return lines[0].split("=")[1].strip().strip("'")


def test_passive_wait_policy_applies_before_openmp_starts():
    assert _spin_count("import omnifast") == "0"
    assert _spin_count("import omnifast", OMP_WAIT_POLICY="ACTIVE") != "0"  # the user's wins
    # torch first: too late for omnifast, and wait_policy() says so
    assert _spin_count("import torch, omnifast; "
                       "assert omnifast.runtime.wait_policy() == ('PASSIVE', False)") != "0"


def test_fit_runs_on_the_threads_it_is_given(monkeypatch, clips, tmp_path, capsys):
    from omnifast.train.trainer import Trainer

    seen = []
    step = Trainer.train_step

    def recording_step(self):
        seen.append(torch.get_num_threads())
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", recording_step)
    before = torch.get_num_threads()
    tracker = omnifast.fit(str(clips[0][0]), preset=TINY.replace(num_iters=2), threads=3,
                           progress=False)
    assert seen == [3, 3] and tracker.info["threads"] == 3
    assert torch.get_num_threads() == before
    seen.clear()
    code = main(["fit", str(clips[0][0]), "--out", str(tmp_path), "--iters", "1", "--quiet",
                 "--points", "10", "--threads", "1"])
    assert code == 0 and seen == [1] and torch.get_num_threads() == before
    assert omnifast.load_tracker(tmp_path).info["threads"] == 1
    capsys.readouterr()
    code = main(["fit", str(clips[0][0]), "--out", str(tmp_path), "--iters", "1", "--quiet",
                 "--threads", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["omnifast: error: threads must be at least 1, got 0"]


def test_default_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert runtime.default_threads() == runtime.cpus_given() >= 1
    assert runtime.cpus_given() <= (os.cpu_count() or 1)


def test_a_local_ray_that_cannot_run_a_fit_is_an_error(capsys):
    from types import SimpleNamespace

    fake = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0})
    assert many._slots(fake, 1, 0, local=True) == 2
    assert many._slots(fake, 0.5, 0, local=True) == 4
    with pytest.raises(ValueError, match="asks for 1 CPUs and 1 GPUs, and this Ray has 2 CPUs "
                                         "and 0 GPUs"):
        many._slots(fake, 1, 1, local=True)
    assert many._slots(fake, 1, 1, local=False) == 1  # a cluster: nodes may join later
    assert "the fits wait for nodes" in capsys.readouterr().err


def test_a_lost_task_is_reported_from_its_state_file(tmp_path):
    folder = tmp_path / "v"
    # its worker died (more often than retried) in the middle of this run's fit
    many._write_json(folder / many.STATE_NAME, {"run": "r1", "running": True, "attempts": 4,
                                                "resumed_from": 6, "status": "failed"})
    r = many._lost("v", "v.mp4", folder, "r1", "failed", "the fit's worker was lost 4 times")
    assert (r.status, r.attempts, r.resumed_from, r.steps) == ("failed", 4, 6, 0)
    assert r.error.startswith("the fit's worker was lost")
    # cancelled after the fit had ended and written its result: that result stands
    many._write_json(folder / many.STATE_NAME, {"run": "r1", "running": False, "name": "v",
                                                "video": "v.mp4", "status": "done", "steps": 9})
    r = many._lost("v", "v.mp4", folder, "r1", "interrupted", "")
    assert (r.status, r.steps) == ("done", 9)
    # cancelled before it started (the state file is an earlier run's)
    r = many._lost("v", "v.mp4", folder, "r2", "interrupted", "")
    assert (r.status, r.attempts, r.steps) == ("interrupted", 0, 0)


def test_each_video_gets_its_own_tracks_and_tensorboard_folder(clips, tmp_path, monkeypatch):
    """`--tracks ext/{name}.npz` and `--tensorboard DIR` reach each fit with the video's name;
    a video whose tracks file is missing fails with that error (not retried)."""
    from omnifast import api

    good, _ = clips
    seen = record_calls(monkeypatch, api, "fit",
                        record=lambda video, **kw: (kw["tracks"], kw["tensorboard"]))
    ext = tmp_path / "ext"
    ext.mkdir()
    clip = generate_clip("easy", num_frames=4, height=24, width=32, seed=0)
    np.savez(ext / "clip0.npz", tracks=clip.tracks[:5, :4], visible=~clip.occluded[:5, :4])
    options = many.fit_options(TINY, seed=SEED, pictures=False, tracks=str(ext / "{name}.npz"),
                               tensorboard=tmp_path / "tb")
    done = many.fit_one(str(good[0]), str(tmp_path / "out" / "clip0"), options)
    assert done["status"] == many.DONE, done["error"]
    assert seen == [(str(ext / "clip0.npz"), str(tmp_path / "tb" / "clip0"))]
    missing = many.fit_one(str(good[1]), str(tmp_path / "out" / "clip1"), options)
    assert missing["status"] == many.FAILED
    assert "clip1.npz does not exist" in missing["error"]
    assert len(seen) == 1  # the missing file was found before any fitting
    with pytest.raises(ValueError, match="name"):
        many.fit_options(TINY, tracks=str(ext / "clip0.npz"))
    assert options["key"] != many.fit_options(TINY, seed=SEED, pictures=False)["key"]
