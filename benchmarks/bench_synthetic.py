"""How long the synthetic benchmark generator takes for a clip of its default size.

    pytest benchmarks/bench_synthetic.py --benchmark-only
"""

import pytest

from omnifast.datasets.synthetic import DIFFICULTIES, generate_clip


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_generate_default_clip(benchmark, difficulty):
    clip = benchmark(generate_clip, difficulty, seed=1)  # 24 frames of 96 x 128
    assert clip.video.shape == (24, 96, 128, 3)
