"""OmniMotion networks (nn.Modules) built on :mod:`omnifast.ops`."""

from omnifast.model.checkpoint import (
    load_checkpoint,
    load_omnimotion_checkpoint,
    save_checkpoint,
)
from omnifast.model.gabor import GaborLayer, GaborNet
from omnifast.model.geometry import (
    contract,
    denormalize_pixels,
    normalize_pixels,
    project,
    sample_depths,
    unproject,
)
from omnifast.model.nvp import InvertibleMap
from omnifast.model.omnimotion import OmniMotion
from omnifast.model.rays import Rays

__all__ = [
    "GaborLayer", "GaborNet", "InvertibleMap", "OmniMotion", "contract", "denormalize_pixels",
    "load_checkpoint", "load_omnimotion_checkpoint", "normalize_pixels", "project",
    "Rays", "sample_depths", "save_checkpoint", "unproject",
]
