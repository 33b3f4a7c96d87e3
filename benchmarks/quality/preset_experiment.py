"""Fit one synthetic clip with changed preset fields and score it (a tool for tuning presets).

    python benchmarks/quality/preset_experiment.py --clip easy --motion exact --out /tmp/e1 \
        --set mask_near=True mask_near_steps=400 [--mset num_samples=32] [--iters 1000]

``--set`` changes fields of the ``cpu`` preset's TrainConfig, ``--mset`` of its ModelConfig,
``--flow`` the settings of ``compute_motion`` for ``--motion dis`` (values are Python literals).
``--motion exact`` fits on the clip's exact pairwise motion, ``dis`` on the optical flow as
``omnifast.fit`` computes it (with the ``--flow`` settings if given). Writes ``result.json``
(the scores of ``score_checkpoint.py`` plus the fit time) and the fit's checkpoints into
``--out``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import time

from score_checkpoint import score

from omnifast.api import fit
from omnifast.config import get_preset
from omnifast.data.flow import compute_motion
from omnifast.eval.run import synthetic_clips


def parse_fields(pairs: list[str]) -> dict:
    """``["key=literal", ...]`` -> ``{key: value}`` (values parsed as Python literals)."""
    out = {}
    for kv in pairs:
        key, _, value = kv.partition("=")
        out[key] = ast.literal_eval(value)
    return out


def changed_cpu_preset(model_fields: list[str], train_fields: list[str]):
    """The ``cpu`` preset with ``key=literal`` changes to its ModelConfig and TrainConfig."""
    p = get_preset("cpu")
    return dataclasses.replace(p, model=dataclasses.replace(p.model, **parse_fields(model_fields)),
                               train=dataclasses.replace(p.train, **parse_fields(train_fields)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="easy", choices=["easy", "medium", "hard"])
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--motion", default="exact", choices=["exact", "dis"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0, help="seed of the fit (model and sampling)")
    ap.add_argument("--set", nargs="*", default=[], help="TrainConfig fields, key=value")
    ap.add_argument("--mset", nargs="*", default=[], help="ModelConfig fields, key=value")
    ap.add_argument("--flow", nargs="*", default=[],
                    help="compute_motion settings for --motion dis, key=value")
    a = ap.parse_args()
    p = changed_cpu_preset(a.mset, a.set)
    clip = synthetic_clips([a.clip])[0]
    kw = {"motion": clip.source.exact_motion()} if a.motion == "exact" else {}
    t0 = time.perf_counter()
    if a.motion == "dis" and a.flow:
        kw["motion"] = compute_motion(clip.video, cache_dir=False, progress=False,
                                      **parse_fields(a.flow))
    tracker = fit(clip.video, preset=p, iters=a.iters, seed=a.seed, out_dir=a.out, progress=False,
                  **kw)
    result = {"clip": a.clip, "motion": a.motion, "iters": a.iters or p.train.num_iters,
              "seed": a.seed, "set": a.set, "mset": a.mset, "flow": a.flow,
              "fit_s": round(time.perf_counter() - t0, 1),
              **score(tracker, clip)}
    print(json.dumps(result))
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
