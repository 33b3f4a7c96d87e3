"""Where subnormal floats arise in a CPU fit, and what flush-to-zero does to the step time.

    python benchmarks/subnormals.py --out /tmp/subnormals            # all three stages

1. ``checkpoint``: fits the synthetic ``medium`` clip (seed 0) with the ``cpu`` preset to
   ``--steps`` (default 1800) with flush-to-zero on (fast), saving a checkpoint.
2. ``census``: resumes from it with flush-to-zero OFF and runs ``--census-steps`` steps under a
   dispatch mode that counts, per aten op, the subnormal values each op produces; also counts
   subnormals in the parameters, their gradients and Adam's moments.
3. ``timing``: seconds per step around step 100 (a fresh fit) and after the checkpoint, with
   flush-to-zero off and on, interleaved, twice each.

Prints one table per stage; the numbers belong in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from omnifast.data import compute_motion
from omnifast.datasets.synthetic import generate_clip
from omnifast.runtime import flush_to_zero
from omnifast.train.trainer import Trainer


def subnormal_count(t: torch.Tensor) -> int:
    """Subnormal entries of a floating tensor (0 for other tensors)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
        return 0
    a = t.detach().abs()
    tiny = torch.finfo(t.dtype).tiny
    return int(((a > 0) & (a < tiny)).sum())


class SubnormalCensus(TorchDispatchMode):
    """Counts subnormal outputs per aten op (and how many values each op produced)."""

    def __init__(self):
        super().__init__()
        self.subnormal = collections.Counter()
        self.produced = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for o in outs:
            if isinstance(o, torch.Tensor) and o.is_floating_point():
                n = subnormal_count(o)
                name = str(func.overloadpacket.__name__)
                self.produced[name] += o.numel()
                if n:
                    self.subnormal[name] += n
        return out


def _trainer(motion, out_dir: str, steps: int) -> Trainer:
    return Trainer(motion, "cpu", iters=steps, out_dir=out_dir, progress=False, seed=0)


def _motion():
    clip = generate_clip("medium", num_frames=24, height=96, width=128)
    return compute_motion(clip.video, progress=False)


def make_checkpoint(motion, out_dir: str, steps: int) -> None:
    t0 = time.time()
    with flush_to_zero(True):
        _trainer(motion, out_dir, steps).run()
    print(f"checkpoint at step {steps} in {time.time() - t0:.0f} s (flush-to-zero on)")


def census(motion, out_dir: str, start: int, steps: int) -> None:
    trainer = _trainer(motion, out_dir, start + steps)
    trainer.resume()
    mode = SubnormalCensus()
    with flush_to_zero(False), mode:
        for _ in range(steps):
            trainer.train_step()
    print(f"\nsubnormal outputs per op over {steps} steps from step {start} (flush-to-zero off)")
    print(f"{'op':32s} {'subnormal':>12s} {'of values':>14s} {'fraction':>10s}")
    for name, n in mode.subnormal.most_common(25):
        print(f"{name:32s} {n:12d} {mode.produced[name]:14d} {n / mode.produced[name]:10.2e}")
    print("\nsubnormals in the state after those steps")
    state = trainer.optimizer.state
    for group_name, group in zip(("feature", "deform", "color"), trainer.optimizer.param_groups):
        counts = collections.Counter()
        sizes = collections.Counter()
        for p in group["params"]:
            for key, t in (("param", p), ("grad", p.grad), ("exp_avg", state[p].get("exp_avg")),
                           ("exp_avg_sq", state[p].get("exp_avg_sq"))):
                if t is not None:
                    counts[key] += subnormal_count(t)
                    sizes[key] += t.numel()
        print(f"  {group_name:8s} " + ", ".join(f"{k} {counts[k]}/{sizes[k]}" for k in sizes))


def _seconds_per_step(trainer: Trainer, steps: int, ftz: bool) -> float:
    with flush_to_zero(ftz):
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        return (time.perf_counter() - t0) / steps


def timing(motion, out_dir: str, start: int, steps: int) -> None:
    print(f"\nseconds per step (median-free: {steps} steps per run, runs interleaved)")
    fresh = _trainer(motion, None, 10**6)
    with flush_to_zero(True):
        for _ in range(100):
            fresh.train_step()
    late = _trainer(motion, out_dir, 10**6)
    late.resume()
    rows = []
    for rep in range(2):
        for ftz in (False, True):
            rows.append(("step ~100", ftz, rep, _seconds_per_step(fresh, steps, ftz)))
            rows.append((f"step ~{start}", ftz, rep, _seconds_per_step(late, steps, ftz)))
    print(f"{'where':12s} {'flush-to-zero':>14s} {'run':>4s} {'s/step':>8s}")
    for where, ftz, rep, s in rows:
        print(f"{where:12s} {str(ftz):>14s} {rep:4d} {s:8.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the checkpoint")
    parser.add_argument("--steps", type=int, default=1800, help="steps of the checkpoint")
    parser.add_argument("--census-steps", type=int, default=5)
    parser.add_argument("--timing-steps", type=int, default=20)
    parser.add_argument("--stages", default="checkpoint,census,timing")
    args = parser.parse_args(argv)
    stages = set(args.stages.split(","))
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    motion = _motion()
    if "checkpoint" in stages:
        make_checkpoint(motion, args.out, args.steps)
    if "census" in stages:
        census(motion, args.out, args.steps, args.census_steps)
    if "timing" in stages:
        timing(motion, args.out, args.steps, args.timing_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
