"""Inputs of a fit: frames and the pairwise motion (optical flow, masks, counts) behind them."""

from omnifast.data.motion import MotionData

__all__ = ["MotionData"]
