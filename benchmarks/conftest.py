"""Benchmark configuration: machine and version facts go into every record."""

import os
import platform
import subprocess

import pytest
import torch


def _commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


@pytest.fixture(autouse=True)
def _machine_info(request):
    bm = request.node.funcargs.get("benchmark") if hasattr(request.node, "funcargs") else None
    if bm is not None:
        bm.extra_info.update({
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "commit": _commit(),
            "OMNIFAST_MATMUL_PRECISION": os.environ.get("OMNIFAST_MATMUL_PRECISION", "fp32"),
        })
    yield
