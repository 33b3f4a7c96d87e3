"""Pure-PyTorch reference implementations of omnifast's fused ops.

This is the oracle for the kernels' parity tests (autograd derives every backward here; nothing
is hand-written), the fallback when no extension is built, and the baseline of the benchmarks.
"""

from omnifast.reference.bijection import (
    CouplingParams,
    affine_ref,
    coupling_stack_ref,
    positional_encoding,
)
from omnifast.reference.composite import (
    composite_argmax_ref,
    composite_ref,
    occlusion_score_ref,
)
from omnifast.reference.gabor import GaborParams, gabor_net_ref
from omnifast.reference.linear import linear

__all__ = [
    "CouplingParams",
    "GaborParams",
    "affine_ref",
    "composite_argmax_ref",
    "composite_ref",
    "coupling_stack_ref",
    "gabor_net_ref",
    "linear",
    "occlusion_score_ref",
    "positional_encoding",
]
