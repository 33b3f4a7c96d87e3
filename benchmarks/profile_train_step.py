"""Where the training step's time goes: a per-component breakdown with FLOP counts.

Times, at the step of ``bench_train_step.py`` (8 pairs x POINTS points x 32 samples), each
network part on its own with the step's point counts (forward + backward, best of ROUNDS), then
the whole step, and prints a torch-profiler table of the step's top ATen ops. Not a pytest suite:
a record generator for benchmarks/RESULTS.md.

    flock /tmp/omnifast-bench.lock env OMP_WAIT_POLICY=PASSIVE .venv/bin/python \
        benchmarks/profile_train_step.py [fp32|bf16] [auto|torch]
"""

from __future__ import annotations

import sys
import time

import torch
from bench_train_step import HEIGHT, NUM_FRAMES, POINTS, WIDTH, make_batch

import omnifast
from omnifast.config import get_preset
from omnifast.model import OmniMotion
from omnifast.model.geometry import contract
from omnifast.train.losses import compute_losses

ROUNDS = 3


def best(fn, rounds: int = ROUNDS) -> float:
    fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> None:
    prec = sys.argv[1] if len(sys.argv) > 1 else "fp32"
    backend = sys.argv[2] if len(sys.argv) > 2 else "auto"
    preset = get_preset("omnimotion")
    cfg, tcfg = preset.model, preset.train
    model = OmniMotion(cfg, NUM_FRAMES)
    batch = make_batch(tcfg.num_pairs, POINTS)
    pts = tcfg.num_pairs * POINTS * cfg.num_samples
    n_sf = tcfg.num_pairs * int(POINTS * tcfg.scene_flow_fraction) * cfg.num_samples * 2
    # point-directions through the bijection: T_i, T_j^-1 on every sample, T_{i-1}^-1 and
    # T_{i+1}^-1 on the scene-flow quarter
    dirs = [("fwd", pts, False), ("inv", pts, True), ("inv sf", n_sf, True)]
    H, AH = cfg.coupling_hidden[0], cfg.affine_hidden
    E = 2 + 4 * cfg.pe_freq
    mac_coupling = cfg.num_coupling * (E * cfg.proj_dim + cfg.proj_dim * H
                                       + (len(cfg.coupling_hidden) - 1) * H * H + 2 * H)
    mac_affine = ((2 * cfg.pe_freq + 2) * AH + (cfg.affine_layers - 2) * AH * AH + 5 * AH)
    CH = cfg.color_hidden
    mac_color = cfg.color_layers * CH * CH + 4 * CH + (cfg.color_layers + 1) * 2 * 3 * CH
    g = torch.Generator().manual_seed(0)
    dm = model.deform_mlp
    fids = torch.arange(NUM_FRAMES)
    rows = []

    with omnifast.backend(backend), omnifast.matmul_precision(prec):
        tot_pd = sum(m for _, m, _ in dirs)
        # the bijection parts, per direction
        for part in ("affine", "coupling"):
            t_sum = 0.0
            for _name, m, inverse in dirs:
                x = (torch.rand(m, 3, generator=g) * 2 - 1).requires_grad_(inverse)
                fi = torch.randint(0, NUM_FRAMES, (m,), generator=g)
                dy = torch.randn(m, 3, generator=g)

                def run(x=x, fi=fi, dy=dy, inverse=inverse, part=part):
                    model.zero_grad(set_to_none=True)
                    psi = model.frame_codes(fids)
                    if part == "affine":
                        y = dm._affine(x, model.time_codes(fids)[fi], inverse)
                    else:
                        y = omnifast.ops.coupling_stack(x, fi, dm.layer_codes(psi),
                                                        dm.coupling_params(), dm.coords,
                                                        dm.pe_freq, inverse=inverse)
                    y.backward(dy)

                t_sum += best(run)
            mac = (mac_affine if part == "affine" else mac_coupling) * tot_pd
            rows.append((f"{part} (fwd+bwd, {tot_pd} point-dirs)", 3 * 2 * mac, t_sum))
        # the colour network on the canonical samples
        u = (torch.rand(pts, 3, generator=g) * 2 - 1).requires_grad_()
        dout = torch.randn(pts, 4, generator=g)

        def color():
            model.zero_grad(set_to_none=True)
            model.color_mlp(contract(u)).backward(dout)

        rows.append((f"colour MLP (fwd+bwd, {pts} samples)", 3 * 2 * mac_color * pts,
                     best(color)))

        def step():
            model.zero_grad(set_to_none=True)
            loss, _ = compute_losses(model, batch, 50_000, tcfg, HEIGHT, WIDTH,
                                     generator=torch.Generator().manual_seed(3))
            loss.backward()

        t_step = best(step, 2)
        from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()

    print(f"precision {prec}, backend {backend}, threads {torch.get_num_threads()}")
    print(f"{'part':48s} {'GFLOP':>8s} {'time':>9s} {'GFLOP/s':>8s} {'of step':>8s}")
    for name, flop, t in rows:
        print(f"{name:48s} {flop / 1e9:8.1f} {t * 1e3:7.0f}ms {flop / t / 1e9:8.1f} "
              f"{t / t_step:8.0%}")
    print(f"{'whole step':48s} {'':8s} {t_step * 1e3:7.0f}ms")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
