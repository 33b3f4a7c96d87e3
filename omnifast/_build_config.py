"""Build parameters of the ``omnifast._C`` extension: the one place that owns them.

``setup.py`` loads this file by path (it must not import the package, which imports torch
helpers that may not be built yet), and so do the JIT helpers and ``make check-sm90``.
Sources are globbed, never listed by hand: a new ``csrc/<op>/<op>_cpu.cpp`` or ``<op>.cu`` is
picked up without touching this file.

Nothing here imports torch at module level, so the file can be read anywhere.
"""

from __future__ import annotations

import glob
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")

EXTENSION_NAME = "omnifast._C"

CXX_FLAGS = ["-O3", "-fopenmp", "-march=x86-64-v3", "-mfma", "-ffp-contract=fast"]
# AVX-512 (with bf16) is used only in translation units that ask for it at run time through
# target attributes; the baseline above keeps the wheel portable to any AVX2 machine.
LD_FLAGS = ["-fopenmp"]
NVCC_FLAGS = [
    "-O3",
    "--use_fast_math",
    "-lineinfo",
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
]


def _rel(paths: list[str]) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def cpu_sources() -> list[str]:
    """C++ sources compiled into every build (paths relative to the repository root)."""
    return _rel(glob.glob(os.path.join(CSRC, "**", "*.cpp"), recursive=True))


def cuda_sources() -> list[str]:
    """CUDA sources, compiled only into CUDA builds."""
    return _rel(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))


def include_dirs() -> list[str]:
    return [CSRC]


def cuda_build_decision() -> tuple[bool, str]:
    """Whether to compile the CUDA sources, and a one-line reason.

    CUDA sources are built only when torch is a CUDA build, nvcc is found, and
    ``OMNIFAST_BUILD_NO_CUDA`` is not set to a true value.
    """
    if os.environ.get("OMNIFAST_BUILD_NO_CUDA", "0").lower() in ("1", "true", "yes", "on"):
        return False, "OMNIFAST_BUILD_NO_CUDA is set"
    try:
        import torch  # noqa: PLC0415 (only when building)
    except ImportError:
        return False, "torch is not importable"
    if not torch.version.cuda:
        return False, f"torch {torch.__version__} is a CPU build"
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc") or (cuda_home and os.path.join(cuda_home, "bin", "nvcc"))
    if not nvcc or not os.path.exists(nvcc):
        return False, "nvcc was not found (set CUDA_HOME)"
    return True, f"torch {torch.__version__} (CUDA {torch.version.cuda}) and {nvcc}"


def source_digest() -> str:
    """A digest of every extension source and this file, to tell whether a build is stale."""
    import hashlib  # noqa: PLC0415

    h = hashlib.sha256()
    files = [os.path.abspath(__file__)]
    for pattern in ("**/*.cpp", "**/*.cu", "**/*.h", "**/*.cuh"):
        files += glob.glob(os.path.join(CSRC, pattern), recursive=True)
    for f in sorted(set(files)):
        h.update(os.path.relpath(f, ROOT).encode())
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]
