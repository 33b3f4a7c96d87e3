"""Flush-to-zero for omnifast's CPU threads (omnifast.runtime.flush_to_zero)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import record_calls

import omnifast
from omnifast import runtime
from omnifast._ext import load_extension
from omnifast.ops import composite

SUBNORMAL = 1e-39  # below fp32's smallest normal, 1.18e-38

needs_ext = pytest.mark.skipif(
    load_extension() is None or not load_extension().flush_to_zero_supported(),
    reason="omnifast._C not built, or not an x86-64 build")


def _threads_state() -> list[bool]:
    return list(load_extension().flush_to_zero_per_thread())


@needs_ext
def test_set_inside_restored_outside_on_every_thread():
    assert not runtime.flush_to_zero_enabled()
    assert not any(_threads_state())
    with runtime.flush_to_zero():
        assert runtime.flush_to_zero_enabled()
        assert all(_threads_state()) and len(_threads_state()) == torch.get_num_threads()
        with runtime.flush_to_zero(False):
            assert not runtime.flush_to_zero_enabled() and not any(_threads_state())
        assert runtime.flush_to_zero_enabled() and all(_threads_state())
    assert not runtime.flush_to_zero_enabled()
    assert not any(_threads_state())


@needs_ext
def test_restored_after_an_exception():
    with pytest.raises(RuntimeError, match="inside"):
        with runtime.flush_to_zero():
            raise RuntimeError("inside")
    assert not runtime.flush_to_zero_enabled() and not any(_threads_state())


@needs_ext
def test_a_subnormal_input_does_not_survive_a_fused_kernel():
    """Enough rays that every thread composites some: each output is the subnormal values times
    a weight of 0.63, subnormal itself unless flushed."""
    rays, samples = 8192, 16
    sigma = torch.zeros(rays, samples)
    sigma[:, 0] = 1.0
    values = torch.full((rays, samples, 3), SUBNORMAL)
    with omnifast.backend("cpu"):
        out, _ = composite(sigma, values)
        assert (out > 0).all() and (out < torch.finfo(torch.float32).tiny).all()
        with runtime.flush_to_zero():
            out, _ = composite(sigma, values)
        assert torch.count_nonzero(out) == 0
        if torch.get_num_threads() > 1:
            # the calling thread alone (torch's switch) leaves the other threads' rays subnormal
            torch.set_flush_denormal(True)
            try:
                out, _ = composite(sigma, values)
            finally:
                torch.set_flush_denormal(False)
            assert 0 < torch.count_nonzero(out) < out.numel()


def test_without_the_extension_the_calling_thread_is_set(monkeypatch):
    monkeypatch.setattr(runtime, "_ext", lambda: None)
    with runtime.flush_to_zero():
        assert runtime.flush_to_zero_enabled()
        assert torch.tensor(SUBNORMAL) * 1.0 == 0
    assert not runtime.flush_to_zero_enabled()
    assert torch.tensor(SUBNORMAL) * 1.0 > 0


def _records_state(monkeypatch, owner, name):
    """Record the flush-to-zero state each call of ``owner.name`` runs under."""
    return record_calls(monkeypatch, owner, name, lambda *a, **k: runtime.flush_to_zero_enabled())


def test_tracking_runs_flushed_and_restores(monkeypatch):
    from conftest import TINY_MODEL

    from omnifast.model.omnimotion import OmniMotion
    from omnifast.track import Tracker

    tracker = Tracker(OmniMotion(TINY_MODEL, 3, seed=0), 12, 16, preset="tiny")
    seen = _records_state(monkeypatch, tracker.model, "map_points")
    tracker.track(np.array([[0, 3, 4]], np.float32))
    assert seen and all(seen)
    assert not runtime.flush_to_zero_enabled()


def test_the_command_line_runs_flushed_and_restores(monkeypatch, capsys):
    from omnifast import cli

    seen = _records_state(monkeypatch, cli, "info_text")
    assert cli.main(["info"]) == 0
    assert seen == [True]
    assert not runtime.flush_to_zero_enabled()


def test_cpu_settings_flush_and_restore():
    with runtime.cpu_settings(1) as threads:
        assert threads == 1 and runtime.flush_to_zero_enabled()
    assert not runtime.flush_to_zero_enabled()


@needs_ext
def test_cpu_settings_with_more_threads_than_the_caller_restores_every_thread():
    """A fit on more threads than its caller uses must not leave the extra pool threads
    flushing: they come back when the caller's thread count grows."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with runtime.cpu_settings(2):
            assert all(_threads_state())
        torch.set_num_threads(2)
        assert not any(_threads_state())
    finally:
        torch.set_num_threads(before)
