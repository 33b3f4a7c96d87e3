"""Fit one masked real clip with changed preset fields and run the mask check (preset tuning).

    python benchmarks/quality/mask_experiment.py parkour --out /tmp/m1 \
        [--set lr_deform=1e-3] [--mset use_affine=True affine_hidden=64] [--frames 25] \
        [--cache /tmp/masks/parkour/parkour/fit/motion-cache] [--baselines chained_flow]

``--set`` / ``--mset`` change fields of the ``cpu`` preset's TrainConfig / ModelConfig (values
are Python literals, as in ``preset_experiment.py``); ``--frames`` keeps the first frames only;
``--cache`` reuses the motion cache of an earlier fit of the same frames. The clip is shrunk to
the preset's 256 px, fitted with ``omnifast eval``'s path (no refinement) and scored by
``omnifast.eval.masks.mask_check``; the median rendered depth on the object and off it
(``foreground_fit.layer_depths``) is printed too. Writes ``--out/mask_results.json``.
"""

from __future__ import annotations

import argparse
import json

from foreground_fit import layer_depths
from foreground_pairs import add_clip_fit_arguments, fit_folder, reuse_motion_cache
from preset_experiment import changed_cpu_preset

import omnifast
from omnifast.eval.masks import MaskedClip, read_masked_clip, run_mask_eval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_clip_fit_arguments(ap)
    ap.add_argument("--baselines", default="", help="comma-separated flow baselines to score")
    ap.add_argument("--set", nargs="*", default=[], help="TrainConfig fields, key=value")
    ap.add_argument("--mset", nargs="*", default=[], help="ModelConfig fields, key=value")
    a = ap.parse_args()
    preset = changed_cpu_preset(a.mset, a.set)
    masked = read_masked_clip(a.data, a.clip, max_side=preset.max_side, max_frames=a.frames)
    if a.frames is not None:
        masked = MaskedClip(f"{a.clip}{a.frames}", masked.video, masked.masks)
    fit_dir = fit_folder(a.out, masked.name)
    reuse_motion_cache(fit_dir, a.cache)
    baselines = [b for b in a.baselines.split(",") if b]
    res = run_mask_eval([masked], a.out / masked.name, preset=preset, baselines=baselines,
                        progress=False, quiet=True, refine=False)
    print(res["table"])
    tracker = omnifast.load_tracker(fit_dir / "tracker.pt")
    fg, bg = layer_depths(tracker, masked.masks)
    print(json.dumps({"clip": masked.name, "set": a.set, "mset": a.mset,
                      "depth_fg": round(fg, 3), "depth_bg": round(bg, 3)}))


if __name__ == "__main__":
    main()
