"""Fused ops: one module per op, each an autograd Function behind the backend dispatch."""

from omnifast.ops.bijection import affine, coupling_stack
from omnifast.ops.composite import composite, composite_argmax, occlusion_score
from omnifast.ops.gabor import gabor_net

__all__ = ["affine", "composite", "composite_argmax", "coupling_stack", "gabor_net",
           "occlusion_score"]
