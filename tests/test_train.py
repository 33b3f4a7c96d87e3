"""Sampler, losses and the training loop (checkpoints, resume, NaN guard, Ctrl-C)."""

from __future__ import annotations

import math
import os
import signal
import warnings

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_MODEL, TINY_TRAIN, translating_motion

from omnifast.config import ModelConfig, Preset, TrainConfig, get_preset
from omnifast.model.checkpoint import CheckpointError
from omnifast.model.omnimotion import OmniMotion
from omnifast.train import losses as L
from omnifast.train import trainer as trainer_mod
from omnifast.train.sampler import PairSampler
from omnifast.train.trainer import FitError, FitInterrupted, Trainer


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """These models are tiny: one thread is faster than two and immune to a busy machine."""


@pytest.fixture(scope="module")
def motion():
    return translating_motion()


# ------------------------------------------------------------------------------ sampler
def test_max_interval_schedule(motion):
    s = PairSampler(motion, get_preset("omnimotion").train)
    assert s.max_interval(0) == 4  # 20 clipped to N - 1
    big = translating_motion(t=30, h=8, w=8)
    s = PairSampler(big, get_preset("omnimotion").train)
    assert [s.max_interval(k) for k in (0, 1999, 2000, 18000)] == [20, 20, 21, 29]


def test_sampler_batch_contents(motion):
    cfg = TrainConfig(num_pairs=64, num_pts=32, start_interval=2)
    s = PairSampler(motion, cfg, seed=1)
    b = s.sample(0)
    assert b.pts1.shape == (64, 32, 2) and b.gt_rgb1.shape == (64, 32, 3)
    d = (b.ids2 - b.ids1).abs()
    assert int(d.min()) >= 1 and int(d.max()) <= 2
    # flows are exact: pts2 - pts1 = v * (j - i), with v = (1, 1)
    delta = (b.ids2 - b.ids1).float()[:, None, None]
    torch.testing.assert_close(b.pts2 - b.pts1, delta.expand(-1, 32, 2))
    # pair weight cos((d - 1) / M * pi / 2), zeroed where a swapped point is not covisible
    expect = torch.cos((d.float() - 1) / 2 * math.pi / 2)[:, None].expand(-1, 32)
    assert torch.all((b.weights == expect) | ((b.weights == 0) & ~b.covisible))
    # gt colours are the frame's colours at pts1 (integer positions when not swapped)
    frames = torch.from_numpy(motion.frames).float() / 255
    for p in range(8):
        x, y = b.pts1[p, 0].long()
        if float(b.pts1[p, 0, 0]).is_integer() and float(b.pts1[p, 0, 1]).is_integer():
            torch.testing.assert_close(b.gt_rgb1[p, 0], frames[b.ids1[p], y, x])
    # adjacent pairs take about half of the draws (weight overwritten with 0.5)
    more = [s.sample(0) for _ in range(10)]
    ds = torch.cat([(x.ids2 - x.ids1).abs() for x in more])
    assert 0.45 < float((ds == 1).float().mean()) < 0.9


def test_sampler_interval_one_uses_all_pixels():
    m = translating_motion(t=3, h=8, w=8, v=(3, 0))
    m.cycle[:] = False  # nothing consistent: only adjacent pairs may still be drawn densely
    m.flow_stats[:] = 0
    cfg = TrainConfig(num_pairs=20, num_pts=64, start_interval=2, use_count_map=False)
    b = PairSampler(m, cfg, seed=0).sample(0)
    adjacent = (b.ids2 - b.ids1).abs() == 1
    far = ~adjacent
    assert adjacent.any() and far.any()
    assert torch.all(b.weights[far] == 0)  # no valid pixel: the pair is flagged invalid
    unswapped = adjacent & (b.weights != 0).any(1)
    assert unswapped.any()


def test_count_map_and_error_map_modes(motion):
    m = translating_motion()
    m.count_maps[:] = 100
    m.count_maps[:, :, :20] = 0  # left half rarely matched: weight 1/sqrt(1) vs 1/sqrt(101)
    cfg = TrainConfig(num_pairs=16, num_pts=64, start_interval=1)
    s = PairSampler(m, cfg, seed=0)
    b = s.sample(0)
    assert not s.has_error_cache
    x_ref = torch.where(b.weights > -1, b.pts1[..., 0], 0)  # any frame; flows are +-1 px
    assert float((x_ref < 20.5).float().mean()) > 0.75
    # error-map mining: the right half carries all the error and frame 3 most of it
    pred = np.stack([m.flows[k, PairSampler.adjacent_partner(k, 5)] for k in range(5)])
    pred[:, :, 30:] += 5.0
    pred[3] += 20.0
    fe = s.set_error_cache(pred)
    assert fe.argmax() == 3 and s.has_error_cache
    ids = torch.cat([s.sample(0).ids1 for _ in range(10)])
    assert float((ids == 3).float().mean()) > 0.3  # proportional to the per-frame error


def test_sampler_state_roundtrip(motion):
    s = PairSampler(motion, TINY_TRAIN, seed=3)
    s.sample(0)
    state = s.state_dict()
    a = s.sample(1)
    s2 = PairSampler(motion, TINY_TRAIN, seed=99)
    s2.load_state_dict(state)
    b = s2.sample(1)
    for name in ("ids1", "ids2", "pts1", "pts2", "gt_rgb1", "weights"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# ------------------------------------------------------------------------------ losses
def test_loss_weight_schedule_matches_original():
    cfg = get_preset("omnimotion").train
    got = {s: L.loss_weights(s, cfg) for s in (1, 5_000, 20_000, 40_000, 50_000, 60_000)}
    assert [round(got[s].flow_grad, 6) for s in got] == [2e-6, 0.01, 0.04, 0.08, 0.1, 0.1]
    assert [round(got[s].rgb, 6) for s in got] == [2e-4, 1, 4, 8, 10, 10]
    assert [got[s].dist for s in got] == [0, 0, 0, 0, 5, 10]
    assert got[1].depth_range == 10 and got[1].scene_flow == 20 and got[1].flow == 1
    assert L.learning_rate_factor(1, cfg) == 1.0
    assert L.learning_rate_factor(20_000, cfg) == 1.0
    assert L.learning_rate_factor(20_001, cfg) == 0.5
    assert L.learning_rate_factor(100_001, cfg) == 0.5 ** 5


def test_trimmed_losses_drop_the_maximum():
    pred = torch.tensor([[0.0, 0.0], [1.0, 1.0], [10.0, 10.0]])
    gt = torch.zeros(3, 2)
    w = torch.tensor([1.0, 0.5, 1.0])
    # errors 0, 1, 10: the maximum is dropped, mean over the 2 kept of w * e
    assert float(L.flow_loss(pred, gt, w)) == pytest.approx(0.25)
    # consecutive differences: entries 1 - 0 = 1 and 10 - 1 = 9; 9 is dropped
    assert float(L.consecutive_diff_loss(pred, gt, w)) == pytest.approx(1.0)
    assert float(L.consecutive_diff_loss(pred, gt)) == pytest.approx(1.0)
    z = torch.tensor([-1.0, 0.5, 3.0, 2.0])
    assert float(L.depth_range_loss(z, 0.0, 2.0)) == pytest.approx((1 + 1) / 4)


def test_distortion_loss_by_hand():
    w = torch.tensor([[0.5, 0.5, 0.0]])
    d = torch.tensor([[0.0, 1.0, 2.0]])
    # intervals [0,1], [1,2], [2,2]; mids 0.5, 1.5, 2; widths 1, 1, 0
    pair = 2 * 0.5 * 0.5 * 1.0
    self_term = (0.25 + 0.25) / 3
    assert float(L.distortion_loss(w, d)) == pytest.approx(pair + self_term)


def test_compute_losses_runs_and_reaches_every_net(motion):
    model = OmniMotion(TINY_MODEL, motion.num_frames, seed=0)
    s = PairSampler(motion, TINY_TRAIN, seed=0)
    gen = torch.Generator().manual_seed(0)
    total, terms = L.compute_losses(model, s.sample(10), 10, TINY_TRAIN, 32, 40, gen)
    assert torch.isfinite(total)
    assert set(terms) == {"flow", "flow_grad", "rgb", "rgb_grad", "depth_range", "distortion",
                          "scene_flow"}
    total.backward()
    for name in ("feature_mlp", "deform_mlp", "color_mlp"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), name


def test_scene_flow_skips_end_frames(motion):
    model = OmniMotion(TINY_MODEL, motion.num_frames, seed=0)
    x = torch.rand(2, 3, 4, 3)
    with torch.no_grad():
        assert float(L.scene_flow_loss(model, x, x, torch.tensor([0, 4]), 5)) == 0.0
        assert float(L.scene_flow_loss(model, x, x, torch.tensor([0, 2]), 5)) > 0.0


# ------------------------------------------------------------------------------ trainer
def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_steps_change_parameters_and_cache(motion, tmp_path):
    tr = Trainer(motion, TINY, out_dir=tmp_path, progress=False)
    before = _params(tr.model)
    tr.run()
    assert tr.step == 6 and tr.sampler.has_error_cache  # cache_every = 3
    after = _params(tr.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "checkpoint.pt").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]  # no temporaries left
    lrs = [g["lr"] for g in tr.optimizer.param_groups]
    assert lrs == pytest.approx([x * 0.5 for x in (1e-3, 1e-4, 3e-4)])  # decayed after step 4


def test_resume_after_crash_matches_uninterrupted(motion, tmp_path, monkeypatch):
    ref = Trainer(motion, TINY, out_dir=tmp_path / "a", progress=False)
    ref.run()
    expected = _params(ref.model)

    crashing = Trainer(motion, TINY, out_dir=tmp_path / "b", progress=False)
    original = Trainer.train_step

    def crash_at_5(self):
        if self.step == 4:
            raise RuntimeError("simulated crash")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", crash_at_5)
    with pytest.raises(RuntimeError, match="simulated"):
        crashing.run()
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = Trainer(motion, TINY, out_dir=tmp_path / "b", progress=False)
    assert resumed.resume() and resumed.step == 4 and resumed.sampler.has_error_cache
    resumed.run(resume=True)
    got = _params(resumed.model)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def test_resume_rejects_foreign_and_corrupt_checkpoints(motion, tmp_path):
    Trainer(motion, TINY.replace(num_iters=2), out_dir=tmp_path, progress=False).run()
    other = translating_motion(seed=1)
    with pytest.raises(CheckpointError, match="another fit"):
        Trainer(other, TINY, out_dir=tmp_path, progress=False).run(resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        Trainer(motion, TINY, out_dir=tmp_path, progress=False).run(resume=True)
    torch.save({"hello": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not an omnifast fit checkpoint"):
        Trainer(motion, TINY, out_dir=tmp_path, progress=False).run(resume=True)


def test_nan_step_is_skipped_and_state_restored(motion, monkeypatch):
    tr = Trainer(motion, TINY.replace(num_iters=3), progress=False)
    original = L.compute_losses
    seen = {}

    def nan_at_3(model, batch, step, *a, **k):
        total, terms = original(model, batch, step, *a, **k)
        if step == 3:
            seen["before"] = _params(model)
            return total * float("nan"), terms
        return total, terms

    monkeypatch.setattr(L, "compute_losses", nan_at_3)
    with pytest.warns(RuntimeWarning, match="step 3: non-finite"):
        tr.run()
    assert tr.step == 3
    after = _params(tr.model)
    assert all(torch.equal(after[k], v) for k, v in seen["before"].items())


def test_persistent_nan_aborts(motion, monkeypatch):
    tr = Trainer(motion, TINY.replace(num_iters=50), progress=False)
    original = L.compute_losses
    monkeypatch.setattr(trainer_mod, "MAX_BAD_STEPS", 3)

    def always_nan(*a, **k):
        total, terms = original(*a, **k)
        return total * float("inf"), terms

    monkeypatch.setattr(L, "compute_losses", always_nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(FitError, match="3 steps in a row"):
            tr.run()
    assert tr.step == 3


def test_ctrl_c_saves_then_stops(motion, tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    def log(step, scalars):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    tr = Trainer(motion, TINY.replace(checkpoint_every=100), out_dir=tmp_path, progress=False,
                 log=log, log_every=1)
    with pytest.raises(FitInterrupted, match="interrupted at step 3"):
        tr.run()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3
    assert signal.getsignal(signal.SIGINT) is handler


def test_nan_flows_are_rejected(motion):
    bad = translating_motion()
    bad.flows[1, 2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Trainer(bad, TINY, progress=False)


def test_fit_learns_the_motion():
    """A short fit on a translating clip must beat the zero-motion guess by a wide margin."""
    from omnifast.track import Tracker

    m = translating_motion(t=4, h=24, w=24, v=(2, 1))
    preset = Preset("tiny", ModelConfig(code_dim=16, code_hidden=32, coupling_hidden=(32,) * 3,
                                        proj_dim=32, use_affine=False, color_hidden=32,
                                        num_samples=8),
                    TrainConfig(num_iters=100, num_pairs=4, num_pts=64, start_interval=3,
                                lr_feature=3e-3, lr_deform=3e-3, lr_color=3e-3,
                                lr_decay_steps=80, cache_every=0, rgb_ramp_steps=50,
                                dist_start=1000, checkpoint_every=1000))
    tr = Trainer(m, preset, progress=False)
    model = tr.run()
    tracker = Tracker(model, 24, 24)
    q = tracker.grid_queries(0, spacing=4)
    q = q[(q[:, 1] < 16) & (q[:, 2] < 16)]  # stay inside every frame
    tracks, _ = tracker.track(q)
    truth = q[:, None, [2, 1]] + np.arange(4)[None, :, None] * np.array([2, 1])
    err = np.linalg.norm(tracks - truth, axis=-1)[:, 1:].mean()
    still = np.linalg.norm(q[:, None, [2, 1]] - truth, axis=-1)[:, 1:].mean()
    assert err < 0.5 * still, (err, still)


def test_fit_takes_external_tracks(motion, monkeypatch):
    """Tracks from another tracker are merged into the motion the trainer sees."""
    import omnifast.api as api

    seen = {}
    real = api.Trainer

    def spy(m, *args, **kwargs):
        seen["motion"] = m
        return real(m, *args, **kwargs)

    monkeypatch.setattr(api, "Trainer", spy)
    t = motion.num_frames
    tracks = np.zeros((1, t, 2), np.float32)
    tracks[0, :, 0] = 5 + np.arange(t)  # a point moving right by one pixel per frame
    tracks[0, :, 1] = 7
    api.fit(motion, iters=1, progress=False, tracks={"tracks": tracks,
                                                     "visible": np.ones((1, t), bool)})
    merged = seen["motion"]
    assert "tracks" in merged.source
    assert merged.cycle[0, t - 1, 7, 5]
    assert np.allclose(merged.flows[0, t - 1, 7, 5], (t - 1, 0))


class _Writer:
    """Stands in for a TensorBoard SummaryWriter: records what it is given."""

    def __init__(self):
        self.scalars, self.flushes, self.closed = [], 0, False

    def add_scalar(self, key, value, step):
        self.scalars.append((key, step))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


def test_fit_returns_the_frames_and_closes_only_the_writer_it_opened(motion, monkeypatch,
                                                                     tmp_path):
    import omnifast.api as api

    given = _Writer()
    tracker = api.fit(motion, preset=TINY, iters=1, progress=False, tensorboard=given)
    assert np.array_equal(tracker.frames, motion.frames)
    assert ("loss/loss", 1) in given.scalars and given.flushes and not given.closed
    opened = []
    monkeypatch.setattr(api, "tensorboard_writer",
                        lambda logdir: opened.append((logdir, _Writer())) or opened[-1][1])
    api.fit(motion, preset=TINY, iters=1, progress=False, tensorboard=tmp_path)
    assert [d for d, _ in opened] == [tmp_path] and opened[0][1].closed
