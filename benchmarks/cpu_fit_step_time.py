"""Time per step of a short cpu-preset fit on the generated `medium` clip, steps 10..N.

Wall clock and the process's CPU time between the log calls at steps 10 and N (the Trainer's
own loop: sampler, step, read-backs), after the first 10 steps as warm-up.

    OMP_WAIT_POLICY=PASSIVE flock -x /tmp/omnifast-cpu.lock .venv/bin/python \
        benchmarks/cpu_fit_step_time.py 70 [DIST_START]

With DIST_START the cpu preset's distortion term switches on after that step (default 800).
"""

import sys
import time

import torch

from omnifast.config import get_preset
from omnifast.datasets.synthetic import generate_clip
from omnifast.train.trainer import Trainer

n = int(sys.argv[1]) if len(sys.argv) > 1 else 70
preset = get_preset("cpu")
if len(sys.argv) > 2:
    preset = preset.replace(dist_start=int(sys.argv[2]))
motion = generate_clip("medium", seed=0).exact_motion()
stamps = {}


def log(step, scalars):
    stamps[step] = (time.perf_counter(), time.process_time())


tr = Trainer(motion, preset, iters=n, progress=False, log=log, log_every=10)
tr.run()
s = sorted(stamps)
a, b = stamps[s[0]], stamps[s[-1]]
k = s[-1] - s[0]
print(f"threads {torch.get_num_threads()}  steps {s[0]}..{s[-1]}: "
      f"wall {(b[0] - a[0]) / k * 1e3:.1f} ms/step, cpu {(b[1] - a[1]) / k * 1e3:.1f} ms/step")
