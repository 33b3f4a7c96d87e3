"""Ahead-of-time compile descriptions of the Triton kernels omnifast launches.

Each kernel module lists, in ``sm90_specs()``, the signatures, block sizes and precisions its
launchers actually use, so that ``make check-sm90`` can compile exactly those for the H100
(sm_90) without a GPU. Importing this module does not import triton.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AOTSpec:
    """One compile of one kernel.

    Attributes:
        name: a label for the report (kernel + variant).
        fn: the ``@triton.jit`` function.
        signature: argument name -> Triton type (``"*fp32"``, ``"i32"``, ...) for every
            non-constexpr argument.
        constexprs: argument name -> value for every ``tl.constexpr`` argument.
        num_warps, num_stages: launch options, as the launcher uses them.
        expect_tensor_cores: whether the kernel does matrix products that must use ``wgmma`` /
            ``mma`` instructions.
    """

    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2
    expect_tensor_cores: bool = False
