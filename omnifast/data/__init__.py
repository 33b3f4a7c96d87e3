"""Inputs of a fit: frames and the pairwise motion (optical flow, masks, counts) behind them."""

from omnifast.data.flow import (
    compute_motion,
    load_tracks,
    merge_tracks,
    motion_from_omnimotion_folder,
    motion_from_tracks,
    write_omnimotion_folder,
)
from omnifast.data.motion import MotionData
from omnifast.data.video import VideoError, load_video, video_digest

__all__ = ["MotionData", "VideoError", "compute_motion", "load_tracks", "load_video",
           "merge_tracks", "motion_from_omnimotion_folder", "motion_from_tracks",
           "video_digest", "write_omnimotion_folder"]
