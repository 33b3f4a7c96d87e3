"""One fit's step time alone and beside a busy process, with the CPU settings before and after
:mod:`omnifast.runtime` (a passive OpenMP wait policy, the thread count of the CPUs given).

Each measurement is a fresh process that builds the ``cpu`` preset's trainer for a generated
24-frame 96x128 clip (its optical flow comes from a cache filled once, first) and times
``--steps`` training steps after ``--warmup`` untimed ones. Two settings:

* ``before``: torch is imported before omnifast, so OpenMP starts with its default wait policy
  (idle threads spin for a while before they sleep: ``GOMP_SPINCOUNT`` 300000) and torch's
  default thread count: how every fit ran before the runtime settings.
* ``after``: omnifast is imported first, as ``omnifast fit`` and the Ray workers of
  ``omnifast fit-many`` do (``OMP_WAIT_POLICY=PASSIVE``: ``GOMP_SPINCOUNT`` 0), and the steps
  run inside :func:`omnifast.runtime.cpu_settings` (all CPUs given).

``--threads 1`` (the default) also measures ``after`` with one thread (what each fit of
``omnifast fit-many`` runs with at its default ``--cpus-per-fit 1``).

The busy process is one Python thread spinning (until its parent exits), started before the fit
and killed after it. ``OMP_WAIT_POLICY`` and ``OMP_NUM_THREADS`` are removed from the children's
environment. Run it under the exclusive lock, on an otherwise idle machine:

    flock -x /tmp/omnifast-cpu.lock .venv/bin/python benchmarks/contention.py

It prints a markdown table (median step time of each run, and the ratio of busy to alone).

``--compare-builds A.so B.so`` compares two builds of ``omnifast._C`` instead (``after``, all
CPUs, alone and busy): each is copied in turn over the installed extension, alternating, and
the installed one is put back at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A busy loop that ends when its parent does (a crashed run leaves no spinner behind).
SPIN_UNTIL_ORPHANED = ("import os, sys\nparent = int(sys.argv[1])\n"
                       "while os.getppid() == parent:\n    for _ in range(10**6): pass")
CLIP = {"difficulty": "easy", "num_frames": 24, "height": 96, "width": 128, "seed": 0}


def child(mode: str, cache: Path, steps: int, warmup: int, threads: int | None) -> dict:
    """Time ``steps`` training steps in this process (run with ``--child``)."""
    import contextlib
    import importlib

    # before: OpenMP starts (with torch) before omnifast can set its wait policy; after:
    # omnifast first, like `omnifast fit` and the Ray workers
    importlib.import_module("torch" if mode == "before" else "omnifast")

    import numpy as np
    import torch

    from omnifast.data.flow import compute_motion
    from omnifast.runtime import cpu_settings, wait_policy
    from omnifast.train.trainer import Trainer

    frames = np.load(cache / "frames.npy")
    motion = compute_motion(frames, cache_dir=cache / "motion", progress=False)
    ctx = cpu_settings(threads) if mode == "after" else contextlib.nullcontext()
    with ctx:
        trainer = Trainer(motion, "cpu", iters=warmup + steps, progress=False)
        times = []
        for _ in range(warmup + steps):
            t0 = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - t0)
        threads = torch.get_num_threads()
    timed = times[warmup:]
    return {"mode": mode, "threads": threads, "median_s": statistics.median(timed),
            "mean_s": statistics.fmean(timed),
            "wait_policy": wait_policy()[0] if wait_policy()[1] else "OpenMP's default"}


def measure(mode: str, threads: int | None, busy: bool, cache: Path, steps: int,
            warmup: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    competitor = None
    if busy:
        competitor = subprocess.Popen(
            [sys.executable, "-c", SPIN_UNTIL_ORPHANED, str(os.getpid())], env=env)
        time.sleep(0.5)
    try:
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--cache", str(cache),
                              "--steps", str(steps), "--warmup", str(warmup),
                              "--fit-threads", str(threads or 0)],
                             env=env, capture_output=True, text=True, check=True)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["busy"] = busy
    return result


def prepare(cache: Path) -> None:
    import numpy as np

    from omnifast.data.flow import compute_motion
    from omnifast.datasets.synthetic import generate_clip

    frames = generate_clip(**CLIP).video
    np.save(cache / "frames.npy", frames)
    compute_motion(frames, cache_dir=cache / "motion", progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", default="1",
                        help="also measure 'after' with these thread counts (comma-separated)")
    parser.add_argument("--child", default=None, choices=["before", "after"])
    parser.add_argument("--cache", default=None)
    parser.add_argument("--fit-threads", type=int, default=0, dest="fit_threads")
    parser.add_argument("--compare-builds", nargs=2, default=None, metavar=("A.so", "B.so"),
                        dest="compare_builds", help="compare two builds of omnifast._C instead")
    args = parser.parse_args()
    if args.compare_builds:
        compare_builds(args.compare_builds, args.steps, args.warmup, args.repeats)
        return
    if args.child:
        print(json.dumps(child(args.child, Path(args.cache), args.steps, args.warmup,
                               args.fit_threads or None)))
        return
    configs = [("before", None), ("after", None)]
    configs += [("after", int(t)) for t in args.threads.split(",") if t.strip()]
    with tempfile.TemporaryDirectory(prefix="omnifast-contention-") as tmp:
        cache = Path(tmp)
        prepare(cache)
        runs = []
        for rep in range(args.repeats):
            for mode, threads in configs:
                for busy in (False, True):
                    r = measure(mode, threads, busy, cache, args.steps, args.warmup)
                    r.update(repeat=rep + 1, asked=threads)
                    runs.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
    print("| settings | run | threads | wait policy | step alone (median) | step beside a busy "
          "process (median) | busy / alone | busy / before alone |")
    print("|---|---|---|---|---|---|---|---|")
    for rep in range(1, args.repeats + 1):
        def pick(mode, threads, busy, rep=rep):
            return next(r for r in runs if r["repeat"] == rep and r["mode"] == mode
                        and r["asked"] == threads and r["busy"] == busy)

        base = pick("before", None, False)["median_s"]
        for mode, threads in configs:
            alone, busy = pick(mode, threads, False), pick(mode, threads, True)
            a, b = alone["median_s"], busy["median_s"]
            print(f"| {mode} | {rep} | {alone['threads']} | {alone['wait_policy']} | "
                  f"{a * 1e3:.0f} ms | {b * 1e3:.0f} ms | {b / a:.2f}x | {b / base:.2f}x |")


def compare_builds(builds: list[str], steps: int, warmup: int, repeats: int) -> None:
    """One table: each build of omnifast._C alone and beside a busy process, alternating."""
    import importlib.util

    # found, not imported: this process must not map a file that is replaced under it
    installed = Path(importlib.util.find_spec("omnifast._C").origin)
    keep = installed.with_suffix(".so.keep")
    shutil.copy2(installed, keep)

    def install(build) -> None:  # a new file renamed over the old (processes keep theirs)
        tmp = installed.with_suffix(".so.tmp")
        shutil.copy2(build, tmp)
        os.replace(tmp, installed)

    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="omnifast-contention-") as tmp:
            cache = Path(tmp)
            prepare(cache)
            for rep in range(repeats):
                for build in builds:
                    install(build)
                    alone = measure("after", None, False, cache, steps, warmup)
                    busy = measure("after", None, True, cache, steps, warmup)
                    rows.append((Path(build).name, rep + 1, alone["median_s"], busy["median_s"]))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        install(keep)
        keep.unlink()
    print("| build | run | step alone | step beside a busy process | busy / alone |")
    print("|---|---|---|---|---|")
    for name, rep, a, b in rows:
        print(f"| {name} | {rep} | {a * 1e3:.1f} ms | {b * 1e3:.1f} ms | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
