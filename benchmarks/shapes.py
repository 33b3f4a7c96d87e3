"""The named benchmark shapes, shared by every benchmark suite."""

from dataclasses import dataclass


@dataclass(frozen=True)
class CompositeShape:
    rays: int
    samples: int
    channels: int


@dataclass(frozen=True)
class BijectionShape:
    points: int
    preset: str  # widths come from this preset's ModelConfig
    frames: int = 8


COMPOSITE = {
    # one OmniMotion training step: 8 pairs x 256 points x 32 samples; colour 3 + point 3 + depth 1
    "train_65k": CompositeShape(65_536, 32, 7),
    # dense inference
    "infer_1m": CompositeShape(1_000_000, 32, 7),
}

BIJECTION = {
    "omnimotion_8k": BijectionShape(8_192, "omnimotion"),
    "omnimotion_65k": BijectionShape(65_536, "omnimotion"),
}
