"""The training step on the device: sync-free, static-shape, capturable (and its losses equal
the previous boolean-indexing ones)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_MODEL, TINY_TRAIN, translating_motion
from torch.utils._python_dispatch import TorchDispatchMode

import omnifast
from omnifast.config import get_preset
from omnifast.model.omnimotion import OmniMotion
from omnifast.train import losses as L
from omnifast.train.sampler import BatchPrefetcher, PairSampler
from omnifast.train.trainer import Trainer, prepare_compile, resolve_step_mode

ROOT = Path(__file__).resolve().parents[1]
aten = torch.ops.aten


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny models: one thread is faster and immune to a busy machine."""


@pytest.fixture(scope="module")
def motion():
    return translating_motion()


# ------------------------------------------------------------------ the previous losses (oracle)
# The boolean-indexing implementation the masked reductions replaced, kept as the oracle of
# their values: index the masked entries, trim the maximum, reduce.
def _old_below_max(e):
    if e.numel() == 0:
        return torch.zeros_like(e, dtype=torch.bool)
    return e < e.detach().max()


def _old_mean(x):
    return x.mean() if x.numel() else x.new_zeros(())


def _old_flow(pred, gt, w, mask):
    pred, gt, w = pred[mask], gt[mask], w[mask]
    e = (pred - gt).abs().mean(-1)
    return _old_mean((e * w)[_old_below_max(e)])


def _old_diff(pred, gt, w, mask):
    pred, gt = pred[mask], gt[mask]
    if pred.shape[0] < 2:
        return pred.new_zeros(())
    e = ((pred[1:] - pred[:-1]) - (gt[1:] - gt[:-1])).abs().mean(-1)
    keep = _old_below_max(e)
    if w is None:
        return _old_mean(e[keep])
    w = w[mask]
    ww = (w[1:] * w[:-1])[keep]
    return (e[keep] * ww).sum() / ww.sum().clamp_min(1e-12)


def _masks(m, gen):
    yield torch.ones(m, dtype=torch.bool)
    yield torch.zeros(m, dtype=torch.bool)  # all masked out
    for p in (0.1, 0.5, 0.9):
        yield torch.rand(m, generator=gen) < p
    if m:
        one = torch.zeros(m, dtype=torch.bool)
        one[m // 2] = True  # a single entry: nothing left after the trim
        yield one


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("m", [0, 1, 2, 7, 300])
def test_masked_losses_equal_indexed_losses(m, dtype, tol):
    gen = torch.Generator().manual_seed(m)
    for trial in range(3):
        pred = torch.randn(m, 2, generator=gen, dtype=dtype) * 3
        gt = torch.randn(m, 2, generator=gen, dtype=dtype) * 3
        w = torch.rand(m, generator=gen, dtype=dtype)
        rgb, gt_rgb = (torch.rand(m, 3, generator=gen, dtype=dtype) for _ in range(2))
        if trial == 2:  # ties: every entry equal to the maximum
            pred, gt = torch.ones_like(pred), torch.zeros_like(gt)
        for mask in _masks(m, gen):
            pairs = [(L.flow_loss(pred, gt, w, mask), _old_flow(pred, gt, w, mask)),
                     (L.consecutive_diff_loss(pred, gt, w, mask), _old_diff(pred, gt, w, mask)),
                     (L.consecutive_diff_loss(rgb, gt_rgb, mask=mask),
                      _old_diff(rgb, gt_rgb, None, mask))]
            for k, (new, old) in enumerate(pairs):
                assert new.shape == () and torch.isfinite(new), (k, mask.sum())
                torch.testing.assert_close(new, old, rtol=tol, atol=tol,
                                           msg=f"term {k}, {int(mask.sum())} of {m} masked")


def test_masked_losses_have_the_indexed_gradients():
    gen = torch.Generator().manual_seed(5)
    m = 64
    mask = torch.rand(m, generator=gen) < 0.6
    base = torch.randn(m, 2, generator=gen, dtype=torch.float64)
    gt = torch.randn(m, 2, generator=gen, dtype=torch.float64)
    w = torch.rand(m, generator=gen, dtype=torch.float64)
    for new_fn, old_fn in ((L.flow_loss, _old_flow), (L.consecutive_diff_loss, _old_diff)):
        a, b = base.clone().requires_grad_(), base.clone().requires_grad_()
        new_fn(a, gt, w, mask).backward()
        old_fn(b, gt, w, mask).backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_scene_flow_masks_the_end_frames_like_indexing(motion):
    model = OmniMotion(TINY_MODEL, motion.num_frames, seed=0).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 5, 3, generator=gen, dtype=torch.float64) * 2 - 1
    xc = torch.rand(4, 3, 5, 3, generator=gen, dtype=torch.float64) * 2 - 1
    ids = torch.tensor([0, 2, 4, 1])
    with torch.no_grad():
        got = L.scene_flow_loss(model, x, xc, ids, 5)
        keep = (ids >= 1) & (ids <= 3)
        xl, xk, fid = x[keep], xc[keep], ids[keep]
        prev_next = model.from_canonical(torch.cat([xk, xk]), torch.cat([fid - 1, fid + 1]))
        xp, xn = prev_next[: len(fid)], prev_next[len(fid):]
        e = ((xl - xp) - (xn - xl)).abs().mean(-1).reshape(-1)
        want = _old_mean(e[_old_below_max(e)])
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert float(L.scene_flow_loss(model, x, xc, torch.tensor([0, 4, 0, 4]), 5)) == 0.0


def test_loss_weight_tensor_equals_the_schedule():
    for cfg in (get_preset("omnimotion").train, get_preset("cpu").train, TINY_TRAIN):
        for s in (1, 2, 3, 7, 99, 100, 101, 799, 800, 801, 820, 840, 841, 5_000, 39_999, 40_000,
                  40_001, 41_234, 50_000, 60_000, 100_000):
            got = L.loss_weight_tensor(torch.tensor(s), cfg).tolist()
            lw = L.loss_weights(s, cfg)
            want = torch.tensor([lw.flow, lw.flow_grad, lw.rgb, lw.dist, lw.depth_range,
                                 lw.scene_flow], dtype=torch.float32).tolist()
            assert got == want, (s, got, want)


def test_compute_losses_with_tensor_weights_is_the_same(motion):
    model = OmniMotion(TINY_MODEL, motion.num_frames, seed=0)
    batch = PairSampler(motion, TINY_TRAIN, seed=0).sample(3)
    for step in (1, 3, 5):
        noise = L.draw_depth_noise(model, (2, 16), torch.Generator().manual_seed(step), "cpu")
        a, ta = L.compute_losses(model, batch, step, TINY_TRAIN, 32, 40, noise=noise)
        b, tb = L.compute_losses(model, batch, step, TINY_TRAIN, 32, 40, noise=noise,
                                 weights=L.loss_weight_tensor(torch.tensor(step), TINY_TRAIN))
        assert torch.equal(a, b) and all(torch.equal(ta[k], tb[k]) for k in ta)
        assert (float(ta["distortion"]) > 0) == (step > TINY_TRAIN.dist_start)


def _pairwise_distortion(w, d):
    """The distortion loss written as its definition: a double sum over sample pairs."""
    d = torch.cat([d, d[..., -1:]], dim=-1)
    mid, width = 0.5 * (d[..., 1:] + d[..., :-1]), d[..., 1:] - d[..., :-1]
    pair = (w[..., :, None] * w[..., None, :] * (mid[..., :, None] - mid[..., None, :]).abs())
    return (pair.sum((-1, -2)) + (w.square() * width).sum(-1) / 3.0).mean()


@pytest.mark.parametrize("k", [1, 2, 5, 32])
def test_distortion_running_sums_equal_the_double_sum(k):
    from omnifast.model.geometry import sample_depths

    gen = torch.Generator().manual_seed(k)
    w = torch.rand(3, 7, k, generator=gen, dtype=torch.float64).requires_grad_()
    d = sample_depths((3, 7), k, 0.0, 2.0, stratified=True, generator=gen, dtype=torch.float64)
    got, want = L.distortion_loss(w, d), _pairwise_distortion(w, d)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    dy = torch.randn((), generator=gen, dtype=torch.float64)
    g1, = torch.autograd.grad(got, w, dy)
    g2, = torch.autograd.grad(want, w, dy)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ no host syncs in the step
def _inside_cpu_extension(func, args) -> bool:
    """A scalar read of a CPU tensor issued from C++ inside one of omnifast._C's CPU entry points
    (they check the range of the frame indices): host memory read by host code, no device
    involved, and not code that runs on a GPU (the CUDA and Triton entry points read nothing)."""
    if func is not aten._local_scalar_dense.default or args[0].device.type != "cpu":
        return False
    frame = sys._getframe(2)
    while frame is not None and "/omnifast/" not in frame.f_code.co_filename.replace("\\", "/"):
        frame = frame.f_back
    if frame is None or "/omnifast/ops/" not in frame.f_code.co_filename.replace("\\", "/"):
        return False
    import linecache  # noqa: PLC0415

    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    return "load_extension()." in line or "ext." in line


class SyncCheck(TorchDispatchMode):
    """Records every op that makes the host wait for the device (or, on a GPU, would): scalar
    reads, data-dependent shapes (nonzero, masked_select, boolean-mask indexing, unique) and
    uploads of host data built in Python (torch.tensor inside the step)."""

    FORBIDDEN = {aten._local_scalar_dense.default, aten.item.default, aten.is_nonzero.default,
                 aten.nonzero.default, aten.nonzero_static.default, aten.masked_select.default,
                 aten.unique_consecutive.default, aten._unique2.default, aten.unique_dim.default,
                 aten.equal.default, aten.allclose.default, aten.lift_fresh.default,
                 aten.repeat_interleave.Tensor}

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FORBIDDEN:
            if not _inside_cpu_extension(func, args):
                self.seen.append(str(func))
        elif func.overloadpacket in (aten.index, aten.index_put, aten.index_put_,
                                     aten._index_put_impl_):
            idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(t is not None and t.dtype == torch.bool for t in idx):
                self.seen.append(f"{func} with a boolean mask")
        elif func in (aten._to_copy.default, aten.copy_.default):
            src = args[1] if func is aten.copy_.default else args[0]
            dst = (args[0].device if func is aten.copy_.default
                   else kwargs.get("device") or src.device)
            if torch.device(dst) != src.device:
                self.seen.append(f"{func} {src.device} -> {dst}")
        return func(*args, **(kwargs or {}))


def test_sync_check_catches_the_old_patterns():
    """The check itself can fail: the previous step's host reads and boolean indexing."""
    x = torch.randn(10)
    with SyncCheck() as check:
        bool(torch.isfinite(x).all())
        _ = x[x > 0]
        _ = torch.tensor([1.0, 2.0])
    assert len(check.seen) == 3, check.seen


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_training_step_has_no_syncing_ops(motion, backend, affine):
    if backend == "cpu" and omnifast.available_backends("coupling_stack")["cpu"] is not None:
        pytest.skip("omnifast._C is not built")
    preset = TINY.replace(mask_near=True, mask_near_steps=3)
    if affine:  # the affine pre-layer of the original's model, at tiny widths
        model = dataclasses.replace(TINY_MODEL, use_affine=True, affine_hidden=16)
        preset = dataclasses.replace(preset, model=model)
    tr = Trainer(motion, preset, progress=False)
    batches = [tr.sampler.sample(k) for k in range(4)]  # the sampler runs on the host
    tr.sampler.sample = lambda k: batches[k]
    with omnifast.backend(backend):
        tr.train_step()  # the first step creates Adam's state
        with SyncCheck() as check:
            for _ in range(3):  # across the mask_near switch and the distortion switch-on
                tr.train_step()
    assert check.seen == [], sorted(set(check.seen))
    terms = tr.read_back()
    assert terms is not None and all(v == v for v in terms.values())


# ------------------------------------------------------------------ masked update (NaN guard)
def test_forced_skip_changes_nothing(motion):
    """The update is masked on the device: what capture's warm-up steps rely on."""
    tr = Trainer(motion, TINY, progress=False)
    tr.train_step()
    params = [p.detach().clone() for p in tr._params]
    state = {k: v.clone() for p in tr._params for k, v in tr.optimizer.state[p].items()}
    tr._force_skip.fill_(1.0)
    tr.train_step()
    assert all(torch.equal(p, q) for p, q in zip(tr._params, params))
    after = {k: v for p in tr._params for k, v in tr.optimizer.state[p].items()}
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert float(tr._skipped) == 1 and float(tr._bad_run) == 1
    tr._force_skip.fill_(0.0)
    tr.train_step()
    assert float(tr._bad_run) == 0
    assert any(not torch.equal(p, q) for p, q in zip(tr._params, params))


def test_step_mode_switch(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_step_mode(None, cpu) == "eager"
    monkeypatch.delenv("OMNIFAST_CUDA_GRAPH", raising=False)
    assert resolve_step_mode(None, cuda) == "eager"  # opt-in until checked on a GPU
    monkeypatch.setenv("OMNIFAST_CUDA_GRAPH", "1")
    assert resolve_step_mode(None, cuda) == "graph"
    monkeypatch.setenv("OMNIFAST_CUDA_GRAPH", "0")
    assert resolve_step_mode(None, cuda) == "eager"
    assert resolve_step_mode("compile", cpu) == "compile"
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_step_mode("graph", cpu)
    with pytest.raises(ValueError, match="unknown step mode"):
        resolve_step_mode("fast", cpu)


# ------------------------------------------------------------------ one graph
def test_step_losses_trace_as_one_graph(motion):
    """torch.compile(fullgraph=True) traces the forward and the losses without a break, and
    gives the eager values and gradients."""
    torch._dynamo.reset()
    prepare_compile()
    model = OmniMotion(TINY_MODEL, motion.num_frames, seed=0)
    batch = PairSampler(motion, TINY_TRAIN, seed=0).sample(3)
    noise = L.draw_depth_noise(model, (2, 16), torch.Generator().manual_seed(1), "cpu")
    weights = L.loss_weight_tensor(torch.tensor(5), TINY_TRAIN)
    params = list(model.parameters())
    with omnifast.backend("torch"):
        want, want_terms = L.step_losses(model, batch, noise, weights, TINY_TRAIN, 32, 40, 1)
        want_g = torch.autograd.grad(want, params)
        fn = torch.compile(L.step_losses, fullgraph=True, backend="aot_eager", dynamic=False)
        got, got_terms = fn(model, batch, noise, weights, TINY_TRAIN, 32, 40, 1)
        got_g = torch.autograd.grad(got, params)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for k in want_terms:
        torch.testing.assert_close(got_terms[k], want_terms[k], rtol=1e-5, atol=1e-6)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_trainer_compiled_forward_matches_eager(motion, monkeypatch):
    monkeypatch.setenv("OMNIFAST_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    preset = TINY.replace(num_iters=3)
    with omnifast.backend("torch"):
        a = Trainer(motion, preset, progress=False, compile="eager")
        a.run()
        b = Trainer(motion, preset, progress=False, compile="compile")
        b.run()
    for p, q in zip(a._params, b._params):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ sampling off the path
def test_prefetched_batches_are_the_sampler_sequence(motion):
    s = PairSampler(motion, TINY_TRAIN, seed=4)
    want = [s.sample(k) for k in range(5)]
    s2 = PairSampler(motion, TINY_TRAIN, seed=4)
    pre = BatchPrefetcher(s2)
    got = [pre.take(0), pre.take(1)]
    state = pre.sampler_state()  # after batch 1, although batch 2 is being drawn
    got.append(pre.take(2))
    pre.drain()  # e.g. a new error cache: batch 3 is drawn again after it
    got += [pre.take(3), pre.take(4)]
    pre.close()
    for a, b in zip(want, got):
        assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in a.__dataclass_fields__)
    s3 = PairSampler(motion, TINY_TRAIN, seed=0)
    s3.load_state_dict(state)
    assert torch.equal(s3.sample(2).pts1, want[2].pts1)


def test_prefetching_fit_resumes_bit_identically(motion, tmp_path, monkeypatch):
    ref = Trainer(motion, TINY, out_dir=tmp_path / "a", progress=False, prefetch=False)
    ref.run()
    expected = {k: v.clone() for k, v in ref.model.state_dict().items()}
    crashing = Trainer(motion, TINY, out_dir=tmp_path / "b", progress=False, prefetch=True)
    original = Trainer.train_step

    def crash_at_5(self, *a, **k):
        if self.step == 4:
            raise RuntimeError("simulated crash")
        return original(self, *a, **k)

    monkeypatch.setattr(Trainer, "train_step", crash_at_5)
    with pytest.raises(RuntimeError, match="simulated"):
        crashing.run()
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = Trainer(motion, TINY, out_dir=tmp_path / "b", progress=False, prefetch=True)
    resumed.run(resume=True)
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_losses_are_read_back_every_log_every_steps(motion):
    seen = []
    tr = Trainer(motion, TINY.replace(num_iters=5), progress=False, log_every=2,
                 log=lambda s, scalars: seen.append((s, sorted(scalars))))
    tr.run()
    assert [s for s, _ in seen] == [2, 4, 5]
    assert "loss/loss" in seen[0][1] and "lr/deform" in seen[0][1]
    assert tr.last_loss == tr.last_loss  # finite, read at the end


# ------------------------------------------------------------------ CUDA (skipped on the CPU)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_cuda_graph_step_matches_eager(motion, backend):
    preset = TINY.replace(num_iters=6, mask_near=True, mask_near_steps=3)
    with omnifast.backend(backend):
        a = Trainer(motion, preset, device="cuda", progress=False, compile="eager")
        a.run()
        b = Trainer(motion, preset, device="cuda", progress=False, compile="graph")
        b.run()
    # mask_near on (steps 1-2), then off; distortion off up to step 3, then on
    assert b.step_mode == "graph" and sorted(b._graphs) == [(0, False), (0, True), (1, False)]
    for p, q in zip(a._params, b._params):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    assert abs(a.last_loss - b.last_loss) <= 1e-4 * abs(a.last_loss) + 1e-6


# ------------------------------------------------------------------ the GPU check script
def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "PYTHON": sys.executable}
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    summary = (out / "summary.txt").read_text()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for stage in ("preflight", "build", "parity", "step_bench", "net_bench", "op_bench",
                  "sanitizer"):
        assert stage in summary, summary
    assert "PASS  step_bench" in summary, summary
    assert (out / "step_bench.json").exists()


def test_gpu_preset_is_the_original_until_measured():
    gpu, orig = get_preset("gpu"), get_preset("omnimotion")
    assert gpu.model == orig.model
    assert gpu.train.num_pairs == 8 and gpu.train.num_pts == 256 and gpu.model.num_samples == 32
    assert gpu.train.num_iters == orig.train.num_iters == 100_000
    assert gpu.train == orig.train.__class__(**{**orig.train.__dict__, "matmul_precision": "tf32"})
    assert "until" in gpu.description and "100,000" in gpu.description


def test_checkpoint_with_a_plain_adam_state_resumes(motion):
    """Checkpoints written before the fused optimizer (plain Adam's state) still resume."""
    tr = Trainer(motion, TINY, progress=False)
    tr.train_step()
    state = tr.state_dict()
    groups = [{"params": g["params"], "lr": 1e-3} for g in tr.optimizer.param_groups]
    plain = torch.optim.Adam(groups)  # the previous optimizer: not fused, step on the host
    for p in tr._params:
        p.grad = torch.randn_like(p)
    plain.step()
    state["optimizer"] = plain.state_dict()
    resumed = Trainer(motion, TINY, progress=False)
    resumed.load_state_dict(state)
    assert all(g["fused"] for g in resumed.optimizer.param_groups)
    resumed.train_step()
    assert resumed.read_back() is not None
    assert all(float(st["step"]) == 2 for st in resumed.optimizer.state.values())
