"""Benchmark of the Trainer's own training step: sampler, forward, losses, backward and Adam.

At the paper's size (``--size paper``: the ``gpu`` preset, 8 pairs x 256 points x 32 samples,
on a 24-frame 96x128 synthetic clip, schedule at step 50,000 so that every loss term is on) or
a small one for the CPU (``--size small``: the cpu preset's networks, 2 pairs x 32 points).
Providers:

* ``ref_eager``: the reference ops, eager (in fp32 this is the original's configuration);
* ``ref_compile``: the reference ops with the forward and losses under ``torch.compile``;
* ``fused_eager``: the automatic backend choice (fused kernels where they exist), eager;
* ``fused_graph``: the same with the whole step captured as one CUDA graph (CUDA only).

Each in fp32, tf32 and bf16 matmul precision. Per configuration: the median step time over
rounds of ``--steps`` steps (a device sync at the end of each round, the losses read back every
10 steps as a fit does), the peak GPU memory (``torch.cuda.max_memory_allocated``), kernel
launches and host syncs per step counted by the profiler, the first step's loss against the
reference's (same seed, same batch; read before any timing), and the time of a 100k-step fit
PROJECTED from the median step (steps only: no error cache, checkpoints or optical flow).

    python benchmarks/bench_train_step.py --size paper --json out.json --md out.md
    python benchmarks/bench_train_step.py --size small --steps 3 --rounds 2     # on a CPU

``pytest benchmarks/bench_train_step.py --benchmark-only`` runs the same measurements as a
pytest-benchmark suite (size from ``OMNIFAST_BENCH_STEP_SIZE``, default small on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import omnifast
from omnifast.config import get_preset
from omnifast.train.sampler import Batch
from omnifast.train.trainer import Trainer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NUM_FRAMES, HEIGHT, WIDTH = 24, 96, 128
#: points per pair of :func:`make_batch` (profile_train_step.py's synthetic batch)
POINTS = int(os.environ.get("OMNIFAST_BENCH_STEP_POINTS", "64"))
#: the schedule step the timed steps start from (every loss term active)
START_STEP = 50_000
FIT_STEPS = 100_000
PROVIDERS = {  # name: (backend, step mode)
    "fused_graph": ("auto", "graph"),
    "fused_eager": ("auto", "eager"),
    "ref_eager": ("torch", "eager"),
    "ref_compile": ("torch", "compile"),
}
PRECISIONS = ("bf16", "tf32", "fp32")


def make_batch(pairs: int, points: int, seed: int = 0) -> Batch:
    """A random batch of the clip's size (for profile_train_step.py)."""
    g = torch.Generator().manual_seed(seed)
    ids1 = torch.randint(1, NUM_FRAMES - 1, (pairs,), generator=g)
    ids2 = (ids1 + torch.randint(1, 5, (pairs,), generator=g)).clamp(max=NUM_FRAMES - 1)
    scale = torch.tensor([WIDTH - 1, HEIGHT - 1], dtype=torch.float32)
    pts1 = torch.rand(pairs, points, 2, generator=g) * scale
    pts2 = pts1 + torch.randn(pairs, points, 2, generator=g) * 2
    return Batch(ids1=ids1, ids2=ids2, pts1=pts1, pts2=pts2,
                 gt_rgb1=torch.rand(pairs, points, 3, generator=g),
                 weights=torch.ones(pairs, points), covisible=torch.ones(pairs, points,
                                                                         dtype=torch.bool))


def preset_for(size: str, precision: str):
    """The preset of a benchmark size, in a matmul precision, with an endless schedule."""
    if size == "paper":
        base = get_preset("gpu")
    elif size == "small":
        base = get_preset("cpu").replace(num_pairs=2, num_pts=32)
    else:
        raise ValueError(f"unknown size {size!r}; use paper or small")
    return base.replace(num_iters=10**9, matmul_precision=precision, cache_every=0,
                        checkpoint_every=10**9)


_MOTION = {}


def clip_motion():
    """The synthetic clip's exact motion (built once per process)."""
    if "m" not in _MOTION:
        from omnifast.datasets.synthetic import generate_clip  # noqa: PLC0415

        _MOTION["m"] = generate_clip("medium", num_frames=NUM_FRAMES, height=HEIGHT,
                                     width=WIDTH, seed=0).exact_motion()
    return _MOTION["m"]


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def make_trainer(provider: str, precision: str, size: str) -> Trainer:
    backend, mode = PROVIDERS[provider]
    tr = Trainer(clip_motion(), preset_for(size, precision), device=DEVICE, progress=False,
                 compile=mode)
    tr.step = START_STEP
    return tr


def run_steps(tr: Trainer, n: int) -> None:
    """``n`` steps as a fit runs them: the losses read back every 10 steps."""
    for _ in range(n):
        tr.train_step()
        if tr.step % 10 == 0:
            tr.read_back()


#: CUDA runtime calls that block the host until the device catches up. (On the CPU nothing
#: is counted: a scalar read there is a read of host memory.)
_SYNC_NAMES = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
               "cudaMemcpy", "cuStreamSynchronize", "cuCtxSynchronize")
_LAUNCH_NAMES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                 "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync")


def profile_counts(tr: Trainer, backend: str, steps: int = 3) -> dict:
    """Kernel launches, device kernels, host syncs (and, on the CPU, aten ops) per step."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with omnifast.backend(backend), profile(activities=acts) as prof:
        for _ in range(steps):
            tr.train_step()
        tr.read_back()
        _sync()
    launches = kernels = syncs = aten_ops = 0
    for ev in prof.events():
        name = ev.name
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            kernels += 1
        elif name in _LAUNCH_NAMES:
            launches += 1
        elif name in _SYNC_NAMES:
            syncs += 1
        elif name.startswith("aten::") and ev.cpu_parent is None:
            aten_ops += 1
    cuda = DEVICE == "cuda"
    return {"launches_per_step": launches / steps if cuda else None,
            "device_kernels_per_step": kernels / steps if cuda else None,
            "host_syncs_per_step": syncs / steps if cuda else None,
            "top_aten_ops_per_step": aten_ops / steps}


def measure(provider: str, precision: str, size: str, steps: int = 10, rounds: int = 3,
            warmup: int = 3, ref_loss: float | None = None, profile_steps: int = 3) -> dict:
    """Time one configuration; see the module docstring for the fields."""
    backend, _ = PROVIDERS[provider]
    tr = make_trainer(provider, precision, size)
    t0 = time.perf_counter()
    with omnifast.backend(backend), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        terms = tr.train_step(read=True)  # the first step (capture or compile happen here)
        loss = float("nan") if terms is None else terms["loss"]
        run_steps(tr, max(warmup - 1, 0))
        _sync()
        setup_s = time.perf_counter() - t0
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            run_steps(tr, steps)
            _sync()
            times.append((time.perf_counter() - t) / steps)
    peak = torch.cuda.max_memory_allocated() if DEVICE == "cuda" else None
    counts = profile_counts(tr, backend, profile_steps)
    med = statistics.median(times)
    return {
        "provider": provider, "precision": precision, "size": size, "device": device_name(),
        "mode_used": tr.step_mode, "steps_per_round": steps, "rounds": rounds,
        "step_ms_median": med * 1e3, "step_ms_min": min(times) * 1e3,
        "setup_s": round(setup_s, 2), "peak_gpu_MiB": None if peak is None else peak / 2**20,
        "fit_100k_min_PROJECTED": med * FIT_STEPS / 60,
        "first_loss": loss,
        "loss_rel_diff_vs_ref_fp32": (None if ref_loss is None
                                      else abs(loss - ref_loss) / max(abs(ref_loss), 1e-12)),
        "warnings": sorted({str(w.message).splitlines()[0][:160] for w in caught}),
        **counts,
    }


def device_name() -> str:
    if DEVICE == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} cpu, {torch.get_num_threads()} threads"


def table(rows: list[dict]) -> str:
    """A Markdown table of :func:`measure` records, with the speed-up over ref_eager fp32."""
    base = next((r["step_ms_median"] for r in rows
                 if r["provider"] == "ref_eager" and r["precision"] == "fp32"), None)
    head = ("| provider | precision | mode | step ms (median) | vs ref_eager fp32 | peak GPU MiB "
            "| launches/step | kernels/step | syncs/step | aten ops/step "
            "| 100k steps (projected) | dloss |")
    out = [head, "|" + "---|" * 12]

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        speed = f"{base / r['step_ms_median']:.1f}x" if base else "-"
        out.append(f"| {r['provider']} | {r['precision']} | {r['mode_used']} | "
                   f"{r['step_ms_median']:.2f} | {speed} | {num(r['peak_gpu_MiB'], '.0f')} | "
                   f"{num(r['launches_per_step'], '.0f')} | "
                   f"{num(r['device_kernels_per_step'], '.0f')} | "
                   f"{num(r['host_syncs_per_step'], '.1f')} | "
                   f"{num(r['top_aten_ops_per_step'], '.0f')} | "
                   f"{r['fit_100k_min_PROJECTED']:.1f} min | "
                   f"{num(r['loss_rel_diff_vs_ref_fp32'], '.1e')} |")
    return "\n".join(out)


def configs(providers, precisions) -> list[tuple[str, str]]:
    """The configurations in order of value: the reference's fp32 baseline first (every
    speed-up is against it), then the captured fused step, the eager fused step, the rest."""
    order = [("ref_eager", "fp32")]
    order += [("fused_graph", p) for p in precisions] + [("fused_eager", p) for p in precisions]
    order += [("ref_compile", "fp32")] + [("ref_eager", p) for p in precisions]
    order += [("ref_compile", p) for p in precisions]
    seen, out = set(), []
    for c in order:
        if c[0] in providers and c[1] in precisions and c not in seen:
            seen.add(c)
            out.append(c)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="paper" if DEVICE == "cuda" else "small")
    ap.add_argument("--providers", default=None,
                    help="comma-separated (default: all on CUDA; ref_eager,fused_eager on CPU)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--profile-steps", type=int, default=3, help="steps under the profiler")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds: start no new configuration after this")
    ap.add_argument("--json", default=None, help="write the records here (after each one)")
    ap.add_argument("--md", default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)
    default = "fused_graph,fused_eager,ref_eager,ref_compile" if DEVICE == "cuda" else \
        "ref_eager,fused_eager"
    providers = (args.providers or default).split(",")
    for p in providers:
        if p not in PROVIDERS:
            ap.error(f"unknown provider {p!r}; choose from {', '.join(PROVIDERS)}")
    if "fused_graph" in providers and DEVICE != "cuda":
        providers.remove("fused_graph")
        print("fused_graph needs CUDA: skipped", file=sys.stderr)
    precisions = args.precisions.split(",")
    t_start, rows, ref_loss = time.perf_counter(), [], None
    print(f"device: {device_name()}, torch {torch.__version__}, size {args.size}", flush=True)
    for provider, precision in configs(providers, precisions):
        if args.budget is not None and time.perf_counter() - t_start > args.budget:
            print(f"budget of {args.budget:.0f} s spent: {provider} {precision} not run",
                  flush=True)
            continue
        try:
            r = measure(provider, precision, args.size, args.steps, args.rounds, args.warmup,
                        ref_loss, args.profile_steps)
        except Exception as exc:  # noqa: BLE001 (record the failure, go on with the rest)
            print(f"{provider} {precision}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        if provider == "ref_eager" and precision == "fp32":
            ref_loss = r["first_loss"]
        rows.append(r)
        print(f"{provider:12s} {precision:5s} {r['mode_used']:7s} {r['step_ms_median']:9.2f} ms"
              f"  syncs/step {r['host_syncs_per_step']}  launches/step "
              f"{r['launches_per_step']}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        if args.md:
            Path(args.md).write_text(f"{device_name()}, torch {torch.__version__}, size "
                                     f"{args.size}\n\n{table(rows)}\n")
    print(table(rows))
    return 0 if rows else 1


# ------------------------------------------------------------------ pytest-benchmark entry
_SIZE = os.environ.get("OMNIFAST_BENCH_STEP_SIZE", "paper" if DEVICE == "cuda" else "small")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_train_step(benchmark, provider, precision):
    if provider == "fused_graph" and DEVICE != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")
    if provider == "ref_compile" and DEVICE != "cuda":
        pytest.skip("torch.compile of the step is a GPU provider (minutes to compile here)")
    backend, _ = PROVIDERS[provider]
    tr = make_trainer(provider, precision, _SIZE)
    with omnifast.backend(backend):
        run_steps(tr, 3)
        _sync()

        def step():
            tr.train_step()
            _sync()

        benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update({"provider": provider, "precision": precision, "size": _SIZE,
                                 "mode_used": tr.step_mode, **profile_counts(tr, backend)})


if __name__ == "__main__":
    sys.exit(main())
