"""Evaluation: TAP-Vid metrics, benchmark readers, flow baselines and the ``eval`` command.

The metrics are imported eagerly; the baselines and readers (OpenCV) and the evaluation loop
(fitting, drawing) load on first use, so ``import omnifast.eval`` stays cheap.
"""

from omnifast.eval.metrics import (
    METRIC_KEYS,
    TAPVID_SIZE,
    THRESHOLDS,
    evaluate_tracks,
    evaluation_mask,
    rescale_query_points,
    rescale_tracks,
    tapvid_metrics,
    temporal_coherence,
    to_tapvid_scale,
)

_LAZY = {
    "chained_flow_baseline": "omnifast.eval.baselines",
    "direct_flow_baseline": "omnifast.eval.baselines",
    "BASELINES": "omnifast.eval.baselines",
    "read_tapvid_pickle": "omnifast.eval.readers",
    "read_kubric_dir": "omnifast.eval.readers",
    "sample_queries": "omnifast.eval.readers",
    "TrackingSample": "omnifast.eval.readers",
    "run_eval": "omnifast.eval.run",
    "synthetic_clips": "omnifast.eval.run",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omnifast.eval' has no attribute {name!r}")


__all__ = ["METRIC_KEYS", "TAPVID_SIZE", "THRESHOLDS", "evaluate_tracks", "evaluation_mask",
           "rescale_query_points", "rescale_tracks", "tapvid_metrics", "temporal_coherence",
           "to_tapvid_scale", *_LAZY]
