"""Refine the tracks of saved real-clip fits with changed RefineConfig fields (refinement tuning).

    python benchmarks/quality/refine_variants.py /tmp/masks --clips parkour,libby \
        --variant "" --variant "direct_flow_candidates=True" [--bg-every 8]

EVAL_OUT holds one earlier ``omnifast eval --suite masks --out EVAL_OUT/<clip>`` run per clip
(``foreground_pairs.fit_folder``): its trackers are loaded, not fitted again. Each
``--variant`` is a space-separated list of ``key=literal`` RefineConfig changes ("": the
default config). The queries are the mask check's grid; with ``--bg-every N`` only every N-th
background query is refined (all foreground queries are, so the foreground numbers are those
of the whole grid). Prints, per clip and variant, the mask check
(``omnifast.eval.masks.mask_check``) of the refined tracks and the seconds refinement
took, then the means over the clips.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from foreground_pairs import fit_folder
from preset_experiment import parse_fields

from omnifast.eval.masks import mask_check, mask_grid_queries, read_masked_clip
from omnifast.refine import RefineConfig, refine_fitted_tracks
from omnifast.track import load_tracker

COLUMNS = ("fg_kept", "bg_kept", "photometric_error")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_out", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/real-clips/DAVIS"))
    ap.add_argument("--clips", default="blackswan,car-roundabout,libby,breakdance,parkour")
    ap.add_argument("--variant", action="append", default=None,
                    help='RefineConfig changes, "key=literal key=literal" ("": the defaults)')
    ap.add_argument("--bg-every", type=int, default=1, help="refine every N-th background query")
    a = ap.parse_args()
    variants = {v: RefineConfig(**parse_fields(v.split())) for v in (a.variant or [""])}
    scores: dict[str, list[dict]] = {v: [] for v in variants}
    print("| clip | variant | " + " | ".join(COLUMNS) + " | seconds |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for clip in a.clips.split(","):
        path = fit_folder(a.eval_out, clip) / "tracker.pt"
        if not path.is_file():
            print(f"| {clip} | no tracker at {path} | |")
            continue
        tracker = load_tracker(path)
        masked = read_masked_clip(a.data, clip, max_side=max(tracker.height, tracker.width))
        queries, on_object = mask_grid_queries(masked.masks, spacing=8)
        keep = on_object | (np.arange(len(queries)) % a.bg_every == 0)
        queries = queries[keep]
        tracks, occluded = tracker.track(queries)
        for name, config in variants.items():
            t0 = time.perf_counter()
            refined = refine_fitted_tracks(tracker, masked.video, queries, tracks, config=config)
            seconds = time.perf_counter() - t0
            res = mask_check(masked.video, masked.masks, queries, np.asarray(refined, np.float64),
                             np.asarray(occluded, bool))
            scores[name].append(res)
            print(f"| {clip} | {name or 'defaults'} | "
                  + " | ".join(f"{res[c]:.3f}" for c in COLUMNS) + f" | {seconds:.0f} |",
                  flush=True)
    for name, rows in scores.items():
        if rows:
            print(f"| **mean of {len(rows)}** | {name or 'defaults'} | " + " | ".join(
                f"{np.nanmean([r[c] for r in rows]):.3f}" for c in COLUMNS) + " | |")


if __name__ == "__main__":
    main()
