"""The README's example runs as pasted: its first Python block is executed as it stands."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def first_python_block(text: str) -> str:
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match, "README.md has no ```python block"
    return match.group(1)


def test_readme_example_runs_as_pasted(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIFAST_CACHE_DIR", str(tmp_path))  # the motion cache: not the user's
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the fit's threads: a tiny model, a busy machine
    code = first_python_block(README.read_text())
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "median error (px):" in out
    tracks, refined, truth = namespace["tracks"], namespace["refined"], namespace["truth"]
    assert tracks.shape == refined.shape == truth.shape == (5, 5, 2)
    assert np.isfinite(refined).all()
    # a generated "easy" clip: the refined tracks land within a few pixels of the truth
    assert float(np.median(np.linalg.norm(refined - truth, axis=-1))) < 1.0
