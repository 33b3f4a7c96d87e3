"""Bilinear lookups shared by the motion builders (align-corners, zero padding)."""

from __future__ import annotations

import numpy as np
import pytest

from omnifast.data.pairs import bilinear_sample, bilinear_sample_ref


def test_bilinear_sample_align_corners_zero_padding():
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    x = np.array([[0.0, 3.0, 1.5, 0.0, -0.5, 3.25, -1.0, 4.0, 0.25]])
    y = np.array([[0.0, 2.0, 0.5, 1.0, 0.0, 2.0, 0.0, 0.0, 0.75]])
    # pixel centres at integers; half a pixel outside blends with zero; one pixel out is zero
    expected = [[0.0, 11.0, 3.5, 4.0, 0.0, 11 * 0.75, 0.0, 0.0, 3.25]]
    np.testing.assert_allclose(bilinear_sample(img, x, y), expected, atol=1e-6)
    np.testing.assert_allclose(bilinear_sample_ref(img, x, y), expected, atol=1e-6)
    np.testing.assert_allclose(bilinear_sample(img, x[0], y[0]), expected[0], atol=1e-6)


@pytest.mark.parametrize("channels", [None, 1, 2, 3, 4, 5])
def test_bilinear_sample_fast_path_matches_reference(channels):
    rng = np.random.default_rng(channels or 0)
    shape = (17, 23) if channels is None else (17, 23, channels)
    img = rng.normal(0, 5, shape).astype(np.float32)
    x = rng.uniform(-2.5, 25.5, (30, 40)).astype(np.float32)
    y = rng.uniform(-2.5, 19.5, (30, 40)).astype(np.float32)
    x[0, :10] = np.round(x[0, :10])
    x[1, :5], y[2, :5] = 1e6, -1e7  # far outside: zero
    fast, ref = bilinear_sample(img, x, y), bilinear_sample_ref(img, x, y)
    assert fast.shape == ref.shape == x.shape + shape[2:]
    np.testing.assert_allclose(fast, ref, rtol=0, atol=2e-5)
