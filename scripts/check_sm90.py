#!/usr/bin/env python
"""Compile every GPU kernel of omnifast for the H100 (sm_90) without a GPU, and report.

* Triton: every ``AOTSpec`` returned by ``sm90_specs()`` of the modules in ``kernels/`` is
  compiled with ``triton.compile`` for target ``cuda``, capability 90.
* CUDA: every ``csrc/**/*.cu`` is compiled with ``nvcc -arch=sm_90`` against the torch headers
  (with a one-line shim for the generated CUDA macros header the CPU wheel lacks).

Per kernel it prints registers, shared memory, local memory (spills), compile time and whether
the PTX of a matrix kernel contains tensor-core instructions (``wgmma`` or ``mma``). Exits
non-zero on any compile error, on spills, on more shared memory than an H100 block may have
(227 KB), on a matrix kernel without Hopper's ``wgmma`` instructions, or on a kernel that takes
more than a minute to compile (a sign of fully unrolled layer loops).
"""

from __future__ import annotations

import argparse
import glob
import importlib
import multiprocessing
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the most shared memory one block may use on an H100 (227 KB)
H100_SMEM_PER_BLOCK = 232_448
#: the longest one kernel may take to compile (seconds)
MAX_COMPILE_SECONDS = 60.0


def _cuobjdump() -> str | None:
    import triton.backends.nvidia as nv  # noqa: PLC0415

    path = os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")
    return path if os.path.exists(path) else shutil.which("cuobjdump")


def _resource_usage(cubin: bytes) -> dict[str, dict[str, int]]:
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                             text=True).stdout
    finally:
        os.unlink(f.name)
    usage, current = {}, None
    for line in out.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            current = m.group(1)
            continue
        if current and "REG:" in line:
            usage[current] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
    return usage


def _compile_one(module: str, index: int) -> dict:
    """Compile spec ``index`` of ``omnifast.kernels.<module>`` for sm_90 (runs in a worker)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    spec = importlib.import_module(f"omnifast.kernels.{module}").sm90_specs()[index]
    sig = dict(spec.signature)
    for name in spec.constexprs:
        sig[name] = "constexpr"
    res = {"name": spec.name, "expect_tc": spec.expect_tensor_cores}
    t0 = time.time()
    try:
        k = triton.compile(ASTSource(spec.fn, sig, constexprs=dict(spec.constexprs)),
                           target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    except Exception as exc:  # noqa: BLE001
        res["error"] = str(exc)
        return res
    ptx = k.asm["ptx"]
    res["tc"] = "wgmma" if "wgmma" in ptx else ("mma" if re.search(r"\bmma\.", ptx) else "none")
    usage = next(iter(_resource_usage(k.asm["cubin"]).values()), {})
    res["regs"], res["local"] = usage.get("REG", -1), usage.get("LOCAL", 0)
    res["smem"] = max(int(getattr(k.metadata, "shared", 0)), usage.get("SHARED", 0))
    res["seconds"] = time.time() - t0
    return res


def check_triton(verbose: bool, modules: list[str] | None = None) -> list[str]:
    try:
        import triton  # noqa: PLC0415
    except ImportError as exc:
        return [f"triton is not importable: {exc}"]
    import omnifast.kernels as kpkg  # noqa: PLC0415

    failures, jobs = [], []
    for info in pkgutil.iter_modules(kpkg.__path__):
        if info.name.startswith("_") or (modules and info.name not in modules):
            continue
        mod = importlib.import_module(f"omnifast.kernels.{info.name}")
        if not hasattr(mod, "sm90_specs"):
            failures.append(f"kernels/{info.name}.py has no sm90_specs()")
            continue
        jobs += [(info.name, i) for i in range(len(mod.sm90_specs()))]
    if not jobs:
        return failures + ["no Triton kernels found to compile"]
    print(f"== Triton {triton.__version__}: {len(jobs)} kernel compiles for sm_90 (H100)")
    print(f"{'kernel':40s} {'regs':>5s} {'smem B':>8s} {'local B':>8s} {'tensor cores':>13s}"
          f" {'s':>5s}")
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_compile_one, *zip(*jobs)))
    for r in results:
        if "error" in r:
            failures.append(f"{r['name']}: compile error: {r['error'].splitlines()[0]}")
            print(f"{r['name']:40s} COMPILE ERROR")
            if verbose:
                print(r["error"])
            continue
        print(f"{r['name']:40s} {r['regs']:5d} {r['smem']:8d} {r['local']:8d} {r['tc']:>13s} "
              f"{r['seconds']:5.0f}")
        if r["local"] > 0:
            failures.append(f"{r['name']}: {r['local']} bytes of local memory (register spills)")
        if r["smem"] > H100_SMEM_PER_BLOCK:
            failures.append(f"{r['name']}: needs {r['smem']} B of shared memory, above the "
                            f"H100's {H100_SMEM_PER_BLOCK} B per block")
        if r["expect_tc"] and r["tc"] != "wgmma":
            failures.append(f"{r['name']}: a matrix kernel without wgmma instructions "
                            f"(found: {r['tc']})")
        if r["seconds"] > MAX_COMPILE_SECONDS:
            failures.append(f"{r['name']}: took {r['seconds']:.0f} s to compile (limit "
                            f"{MAX_COMPILE_SECONDS:.0f} s)")
    return failures


def _demangle(name: str) -> str:
    """A short readable kernel name: demangled, without namespaces and argument lists."""
    tool = shutil.which("c++filt")
    if tool:
        name = subprocess.run([tool, name], capture_output=True, text=True).stdout.strip() or name
    name = re.sub(r"^void ", "", name.replace("(anonymous namespace)::", ""))
    name = name.split("(", 1)[0]  # drop the argument list
    return re.sub(r"\b\w+::", "", name)


def _torch_includes() -> list[str]:
    from torch.utils.cpp_extension import include_paths  # noqa: PLC0415

    return include_paths()


def check_cuda(verbose: bool) -> list[str]:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu"), recursive=True))
    print(f"== CUDA: {len(sources)} source(s) compiled with {nvcc} for sm_90")
    if not sources:
        return []
    if not os.path.exists(nvcc):
        return ["nvcc not found"]
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        shim = os.path.join(tmp, "shim", "c10", "cuda", "impl")
        os.makedirs(shim)
        with open(os.path.join(shim, "cuda_cmake_macros.h"), "w") as f:
            f.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        incs = [os.path.join(tmp, "shim"), os.path.join(ROOT, "csrc"), *_torch_includes()]
        py_inc = subprocess.run([sys.executable, "-c",
                                 "import sysconfig;print(sysconfig.get_paths()['include'])"],
                                capture_output=True, text=True).stdout.strip()
        incs.append(py_inc)
        for src in sources:
            rel = os.path.relpath(src, ROOT)
            cmd = [nvcc, "-arch=sm_90", "-c", src, "-o", os.path.join(tmp, "k.o"), "-O3",
                   "-std=c++17", "--resource-usage", "-DOMNIFAST_WITH_CUDA=1",
                   "-DTORCH_EXTENSION_NAME=_C", "--expt-relaxed-constexpr",
                   *[f"-I{i}" for i in incs]]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                failures.append(f"{rel}: nvcc failed")
                print(f"{rel}: FAILED\n{proc.stderr[-4000:]}")
                continue
            print(f"{rel}: OK")
            kernel = None
            for line in (proc.stdout + proc.stderr).splitlines():
                m = re.search(r"Compiling entry function '(\S+)'", line)
                if m:
                    kernel = m.group(1)
                m = re.search(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?", line)
                if m and kernel:
                    smem = re.search(r"(\d+) bytes smem", line)
                    print(f"  {_demangle(kernel)[:70]:70s} regs {m.group(1):>4s} smem "
                          f"{smem.group(1) if smem else '0':>6s}")
                m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
                if m and kernel and (int(m.group(1)) or int(m.group(2))):
                    failures.append(f"{rel}:{kernel}: spills {m.group(0)}")
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("triton", "cuda"), default=None)
    ap.add_argument("--module", action="append", default=None,
                    help="only these kernels/ modules (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    failures = []
    if args.only in (None, "triton"):
        failures += check_triton(args.verbose, args.module)
    if args.only in (None, "cuda"):
        failures += check_cuda(args.verbose)
    if failures:
        print("\ncheck-sm90 FAILED:")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("\ncheck-sm90 OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
