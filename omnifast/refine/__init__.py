"""Appearance refinement of fitted tracks: sub-pixel corrections by template matching.

omnifast's own stage after the fitted model (OmniMotion stops at the model's
correspondences). For each query and each other frame, a patch of the query frame around the
query, warped by the local rotation and scale, is matched against the frame around a few
candidate positions, and the point is placed by the matches of a 3x3 grid of such windows.
Positions move; occlusion flags do not. Why each step and setting is what it is, with the
measurements behind them: docs/design.md, "Refinement".

Modules, by job:

- :mod:`~omnifast.refine.config`: :class:`RefineConfig`, every setting, validated.
- :mod:`~omnifast.refine.frames`: frames as tensors, bilinear samples, the in-frame test.
- :mod:`~omnifast.refine.matching`: one template against one frame (NCC search, sub-pixel).
- :mod:`~omnifast.refine.candidates`: where a window is searched in each frame (model, flow,
  wide search) and which match wins.
- :mod:`~omnifast.refine.consensus`: windows, passes and frames agreeing (similarity fits,
  nearest-frame fill, spike filter).
- :mod:`~omnifast.refine.pipeline`: the stage: :func:`refine_tracks` on arrays and
  :func:`refine_fitted_tracks`, the one path from a fitted model.
"""

from omnifast.refine.candidates import frame_flows
from omnifast.refine.config import RefineConfig
from omnifast.refine.consensus import similarity_part
from omnifast.refine.frames import patch_offsets
from omnifast.refine.pipeline import refine_fitted_tracks, refine_tracks

__all__ = ["RefineConfig", "frame_flows", "patch_offsets", "refine_fitted_tracks",
           "refine_tracks", "similarity_part"]
