"""The environment the Triton kernels read (the bottom of the layers: imports only os)."""

from __future__ import annotations

import os


def triton_interpret() -> bool:
    """Whether Triton runs under its CPU interpreter (``TRITON_INTERPRET=1``): the kernels
    then launch few, large programs, and the dispatch lets them take CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
