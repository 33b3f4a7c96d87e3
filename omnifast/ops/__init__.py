"""Fused ops: one module per op, each an autograd Function behind the backend dispatch."""

from omnifast.ops.bijection import affine, coupling_stack
from omnifast.ops.composite import composite

__all__ = ["affine", "composite", "coupling_stack"]
