"""omnifast: OmniMotion dense long-range point tracking, made fast.

``import omnifast`` never compiles anything and works without a GPU, without Triton and
without the built extension ``omnifast._C`` (the reference PyTorch path is used then).
"""

from omnifast import runtime as _runtime  # the standard library only

# OpenMP reads its wait policy once, when torch loads it: this must come before `import torch`.
_runtime.prepare_environment()

import torch  # noqa: F401  (must come before the compiled extension is imported)

from omnifast.config import CPU, OMNIMOTION, PRESETS, ModelConfig, Preset, TrainConfig, get_preset
from omnifast.dispatch import (
    BackendUnavailableError,
    available_backends,
    backend,
    get_backend,
    get_matmul_precision,
    matmul_precision,
)
from omnifast.model import (
    OmniMotion,
    load_checkpoint,
    load_omnimotion_checkpoint,
    save_checkpoint,
)
from omnifast.model.checkpoint import CheckpointError

__version__ = "0.1.0"

__all__ = [
    "CPU", "OMNIMOTION", "PRESETS", "BackendUnavailableError", "CheckpointError", "ModelConfig",
    "OmniMotion", "Preset", "TrainConfig", "available_backends", "backend", "get_backend",
    "get_matmul_precision", "get_preset", "load_checkpoint", "load_omnimotion_checkpoint",
    "matmul_precision", "save_checkpoint",
]

# The fitting API is imported on first use, so that `import omnifast` stays light (no OpenCV,
# imageio or tqdm until a clip is actually loaded or fitted).
_LAZY = {
    "fit": ("omnifast.api", "fit"),
    "fit_many": ("omnifast.many", "fit_many"),
    "load_tracker": ("omnifast.track", "load_tracker"),
    "Tracker": ("omnifast.track", "Tracker"),
    "RefineConfig": ("omnifast.refine", "RefineConfig"),
    "load_video": ("omnifast.data.video", "load_video"),
}
__all__ += list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'omnifast' has no attribute {name!r}")
