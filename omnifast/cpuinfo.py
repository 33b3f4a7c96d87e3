"""What the CPU is and which instruction sets the math libraries under omnifast use.

Rounding in torch's matrix products (oneMKL for fp32, oneDNN for bf16) depends on the code path
the library picks for the CPU, which ``MKL_ENABLE_INSTRUCTIONS`` and ``ONEDNN_MAX_CPU_ISA``
restrict; ``omnifast info`` prints what is in force so that a result can be tied to a machine.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys

#: CPU flags that decide the math libraries' code paths.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16")
#: environment variables that restrict those code paths.
ISA_ENV = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")

# Runs one oneMKL product and one oneDNN primitive with both libraries' verbose output on.
_PROBE = ("import torch\n"
          "a = torch.ones(8, 8)\n"
          "a @ a\n"
          "torch.relu(torch.ones(1, 8, 4, 4).to_mkldnn())\n")


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` line of ``/proc/cpuinfo`` (None where it is absent)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), or what the platform module says."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of :data:`ISA_FLAGS` the CPU reports (empty where ``/proc/cpuinfo`` is absent)."""
    present = set((_cpuinfo_field("flags") or "").split())
    return [flag for flag in ISA_FLAGS if flag in present]


def math_library_isas(timeout: float = 60.0) -> dict[str, str]:
    """The code paths torch's math libraries choose here, read from their verbose output.

    Runs a short probe in a child process (the libraries print their choice once, at their first
    call). Returns ``{"aten": ..., "onemkl": ..., "onednn": ...}``; a value says "unknown (...)"
    where the library printed nothing.
    """
    import torch  # noqa: PLC0415

    result = {"aten": torch.backends.cpu.get_cpu_capability()}
    env = dict(os.environ, MKL_VERBOSE="1", ONEDNN_VERBOSE="1")
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                             text=True, timeout=timeout, check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        out = ""
        result["probe"] = f"failed: {exc}"
    result.update(parse_verbose(out))
    return result


def parse_verbose(out: str) -> dict[str, str]:
    """The oneMKL and oneDNN code paths named in their verbose output ``out``."""
    result = {}
    mkl = re.search(r"^MKL_VERBOSE (?:oneMKL|Intel\(R\) MKL) ([^\n]*?) for (.*?),", out, re.M)
    result["onemkl"] = f"{mkl.group(1)}: {mkl.group(2)}" if mkl else "unknown (no verbose line)"
    dnn = re.search(r"^onednn_verbose,.*?,cpu,isa:(.*)$", out, re.M)
    result["onednn"] = dnn.group(1).strip() if dnn else "unknown (no verbose line)"
    return result


def cpu_report() -> list[str]:
    """Lines for ``omnifast info``: model, flags, restricting variables, libraries' code paths."""
    lines = [f"cpu: {cpu_model()}, {os.cpu_count()} logical cores",
             f"  instruction sets: {' '.join(cpu_flags()) or 'unknown'}"]
    restricted = [f"{name}={os.environ[name]}" for name in ISA_ENV if name in os.environ]
    lines.append(f"  restricted by: {' '.join(restricted) or 'nothing (library defaults)'}")
    lines += [f"  {lib} code path: {path}" for lib, path in math_library_isas().items()]
    return lines
