"""Packaging: the wheel's layout, imports without optional parts, one place for the pins."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, env_extra: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # The pure-Python part of the wheel (the extension build is exercised by `make install`).
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
         "-w", str(out), str(ROOT)],
        capture_output=True, text=True, env={**os.environ, "OMNIFAST_BUILD_NO_EXT": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheels = list(out.glob("omnifast-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_kernels_install_as_omnifast_kernels(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "omnifast/kernels/__init__.py" in names
    assert not any(n.startswith("kernels/") for n in names), "a top-level 'kernels' package"
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                           "--target", str(target), str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = _run("import omnifast, omnifast.kernels, importlib.util; "
               "print(omnifast.__file__); print(omnifast.kernels.__file__); "
               "print(importlib.util.find_spec('kernels'))",
               {"PYTHONPATH": str(target)}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(str(target)) and lines[1].startswith(str(target))
    assert lines[2] == "None"


BLOCK_TRITON = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == 'triton' or name.startswith('triton.'):
            raise ImportError('triton blocked for this test')
        return None
sys.meta_path.insert(0, _Block())
"""


def test_import_without_extension_and_without_triton():
    code = BLOCK_TRITON + """
import torch, omnifast
from omnifast import dispatch
assert 'triton' not in sys.modules
info = omnifast.available_backends('composite')
assert info['torch'] is None and 'OMNIFAST_DISABLE_EXTENSION' in info['cpu'], info
assert 'triton' in info['triton'], info
m = omnifast.OmniMotion.from_preset('cpu', num_frames=3)
x = torch.rand(1, 4, 2, 3)
u = m.to_canonical(x, torch.tensor([0]))
out, w = omnifast.ops.composite(torch.rand(4, 5), torch.rand(4, 5, 3))
with omnifast.backend('cpu'):
    try:
        omnifast.ops.composite(torch.rand(4, 5), torch.rand(4, 5, 3))
        raise SystemExit('explicit cpu backend should fail without the extension')
    except omnifast.BackendUnavailableError as e:
        assert 'OMNIFAST_DISABLE_EXTENSION' in str(e)
print('ok')
"""
    res = _run(code, {"OMNIFAST_DISABLE_EXTENSION": "1", "OMNIFAST_BACKEND": "auto"})
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_import_does_not_compile_or_import_heavy_modules():
    res = _run("import sys, omnifast; "
               "print(sorted(m for m in ('triton', 'cv2', 'imageio', 'torch.utils.cpp_extension')"
               " if m in sys.modules))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_pins_live_in_requirements_and_match_the_build_requirement():
    req = (ROOT / "requirements.txt").read_text()
    pin = re.search(r"^torch==([\w.+]+)", req, re.M).group(1)
    pyproject = (ROOT / "pyproject.toml").read_text()
    build_requires = re.search(r"^requires = \[(.*)\]", pyproject, re.M).group(1)
    assert f'"torch=={pin}"' in build_requires
    deps = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.M | re.S).group(1)
    assert "==" not in deps, "runtime dependencies take lower bounds; pins live in requirements"
