"""Datasets: procedurally rendered clips with exact ground truth."""

from omnifast.datasets.synthetic import DIFFICULTIES, SyntheticClip, generate_clip

__all__ = ["DIFFICULTIES", "SyntheticClip", "generate_clip"]
