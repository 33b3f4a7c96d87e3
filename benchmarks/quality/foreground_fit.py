"""Does a fitted model reproduce its own training flows on a real clip's object?

    python benchmarks/quality/foreground_fit.py EVAL_OUT [--data DAVIS] [--clips a,b]

``EVAL_OUT`` as for ``foreground_pairs.py`` (one ``omnifast eval --suite masks`` run per clip,
each with its fit's ``tracker.pt`` and motion cache). For frame gaps 1, 3 and 10 it takes up to
40 cycle-consistent pixels on the object and 40 off it from every 9th frame, maps them with the
fitted model (``Tracker.track``) and prints the median distance to the flow the fit was trained
on, with the median length of that flow: an error near the flow's length on the object means the
model moved the object with its surroundings. The last column is the median rendered depth
(``Tracker.depth_maps``, 0 to 2) on the object and off it over five frames: equal depths mean
the fit has put the object and the background in one layer.
"""

from __future__ import annotations

import numpy as np
from foreground_pairs import cache_entry, eval_out_arguments, fit_folder, masks_at

import omnifast

GAPS = (1, 3, 10)
PER_FRAME = 40


def self_fit(tracker, flows, cycle, masks, gap: int, seed: int = 0) -> dict[str, tuple]:
    """{"fg" / "bg": (median error px, median flow length px)} at one frame gap."""
    rng = np.random.default_rng(seed)
    t = flows.shape[0]
    errors: dict[str, list] = {"fg": [], "bg": []}
    lengths: dict[str, list] = {"fg": [], "bg": []}
    for i in range(0, t - gap, 9):
        j = i + gap
        valid = np.asarray(cycle[i, j])
        for part, region in (("fg", masks[i]), ("bg", ~masks[i])):
            ys, xs = np.nonzero(valid & region)
            if not len(ys):
                continue
            pick = rng.choice(len(ys), min(PER_FRAME, len(ys)), replace=False)
            ys, xs = ys[pick], xs[pick]
            queries = np.stack([np.full(len(ys), i), ys, xs], 1).astype(np.float64)
            tracks, _ = tracker.track(queries, frames=[j], with_occlusion=False)
            moved = np.asarray(tracks)[:, 0] - np.stack([xs, ys], 1)
            flow = np.asarray(flows[i, j])[ys, xs]
            errors[part].append(np.linalg.norm(moved - flow, axis=1))
            lengths[part].append(np.linalg.norm(flow, axis=1))
    return {p: (float(np.median(np.concatenate(errors[p]))),
                float(np.median(np.concatenate(lengths[p])))) for p in errors if errors[p]}


def layer_depths(tracker, masks, frames: int = 5) -> tuple[float, float]:
    """Median rendered depth on the object and off it over ``frames`` evenly spaced frames."""
    picked = np.linspace(0, len(masks) - 1, frames).round().astype(int)
    depth = tracker.depth_maps(picked.tolist())
    return (float(np.median(depth[masks[picked]])), float(np.median(depth[~masks[picked]])))


def main() -> None:
    args = eval_out_arguments(__doc__.splitlines()[0])
    print("| clip | " + " | ".join(f"d = {d}: fg error / flow, bg error / flow (px)" for d in GAPS)
          + " | depth fg / bg |")
    print("|---|" + "---|" * (len(GAPS) + 1))
    for clip in args.clips.split(","):
        fit = fit_folder(args.eval_out, clip)
        entry = cache_entry(args.eval_out, clip)
        if entry is None:
            print(f"| {clip} | no motion cache under {args.eval_out / clip} |")
            continue
        flows = np.load(entry / "flows.npy", mmap_mode="r")
        cycle = np.load(entry / "cycle.npy", mmap_mode="r")
        masks = masks_at(args.data, clip, (flows.shape[0], *flows.shape[2:4]))
        tracker = omnifast.load_tracker(fit / "tracker.pt")
        cells = []
        for d in GAPS:
            r = self_fit(tracker, flows, cycle, masks, d)
            cells.append(", ".join(f"{r[p][0]:.2f} / {r[p][1]:.1f}" for p in ("fg", "bg")))
        cells.append("{:.2f} / {:.2f}".format(*layer_depths(tracker, masks)))
        print(f"| {clip} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
