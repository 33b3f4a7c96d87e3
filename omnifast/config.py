"""Typed configurations and the named presets (``omnimotion``, ``cpu`` and ``gpu``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes and ray sampling. Defaults are the original's ``configs/default.txt``."""

    # latent code network (GaborNet on the time code t_i = (i + 1) / N)
    code_dim: int = 128
    code_hidden: int = 256
    code_layers: int = 2
    code_alpha: float = 4.5
    # invertible mapping
    num_coupling: int = 6
    coupling_hidden: tuple[int, ...] = (256, 256, 256)
    proj_dim: int = 256
    pe_freq: int = 4
    use_affine: bool = True
    affine_hidden: int = 256
    affine_layers: int = 8  # the original's real depth (spec section 7, bug 2)
    # canonical colour / density network
    color_hidden: int = 512
    color_layers: int = 3
    color_alpha: float = 3.0
    # density = softplus(out - density_bias): sets the initial density along the rays
    density_bias: float = 1.0
    gabor_input_scale: float = 256.0
    # rays
    num_samples: int = 32
    min_depth: float = 0.0
    max_depth: float = 2.0

    def __post_init__(self) -> None:
        if len(set(self.coupling_hidden)) != 1:
            raise ValueError("coupling_hidden widths must all be equal, got "
                             f"{self.coupling_hidden}")
        if self.num_coupling < 1 or self.num_samples < 1:
            raise ValueError("num_coupling and num_samples must be positive")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule and sampling (spec sections 2 and 4)."""

    num_iters: int = 100_000
    num_pairs: int = 8
    num_pts: int = 256
    lr_feature: float = 1e-3
    lr_deform: float = 1e-4
    lr_color: float = 3e-4
    lr_decay_steps: int = 20_000
    lr_decay_factor: float = 0.5
    start_interval: int = 20
    interval_growth_steps: int = 2_000
    use_error_map: bool = True
    use_count_map: bool = True
    mask_near: bool = False
    mask_near_steps: int = 4_000
    cache_every: int = 20_000
    # loss-weight schedules, in steps (spec 4.3); the cpu preset compresses them
    rgb_ramp_steps: int = 5_000
    rgb_weight_max: float = 10.0
    flow_grad_ramp_steps: int = 500_000
    flow_grad_weight_max: float = 0.1
    dist_start: int = 40_000
    dist_ramp_steps: int = 2_000
    dist_weight_max: float = 10.0
    depth_range_weight: float = 10.0
    scene_flow_weight: float = 20.0
    scene_flow_fraction: float = 0.25
    checkpoint_every: int = 20_000
    # predict the error cache's flows on every n-th pixel only (1 = every pixel, the original)
    error_cache_stride: int = 1
    # matmul precision of the fit's steps ("fp32", "tf32", "bf16"); None: as the caller's
    # omnifast.matmul_precision block or OMNIFAST_MATMUL_PRECISION says
    matmul_precision: str | None = None


@dataclass(frozen=True)
class Preset:
    """A model, its training schedule, and ``max_side``: the longest frame side the command
    line shrinks clips to when ``--max-side`` is not given (None: full resolution). The exhaustive
    pairwise flow costs T^2 * H * W (time, and about 10 bytes a pixel in the motion cache), so
    the resolution bounds the preprocessing of long real clips."""

    name: str
    model: ModelConfig
    train: TrainConfig
    description: str = ""
    max_side: int | None = None

    def replace(self, **train_overrides) -> Preset:
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **train_overrides))

    def with_steps(self, num_iters: int) -> Preset:
        """This preset run for ``num_iters`` steps with every schedule scaled in proportion.

        The step counts of the learning-rate decay, the pair-interval growth, the error cache,
        the loss-weight ramps, mask_near and the checkpoints are multiplied by
        ``num_iters / self.train.num_iters`` (rounded, at least 1), so that a shorter fit goes
        through the same phases; ``fit(iters=N)`` instead stops the preset's schedule at N.
        """
        if int(num_iters) < 1:
            raise ValueError(f"num_iters must be >= 1, got {num_iters}")
        f = int(num_iters) / self.train.num_iters
        t = self.train
        scaled = {name: max(1, round(getattr(t, name) * f)) for name in _SCHEDULE_FIELDS}
        return self.replace(num_iters=int(num_iters), **scaled)


#: TrainConfig fields counted in steps, scaled by :meth:`Preset.with_steps`
_SCHEDULE_FIELDS = ("lr_decay_steps", "interval_growth_steps", "mask_near_steps", "cache_every",
                    "rgb_ramp_steps", "flow_grad_ramp_steps", "dist_start", "dist_ramp_steps",
                    "checkpoint_every")


OMNIMOTION = Preset(
    name="omnimotion",
    model=ModelConfig(),
    train=TrainConfig(),
    description="The original OmniMotion defaults (configs/default.txt): 2.98 M parameters, "
    "8 pairs x 256 points x 32 samples, 100k iterations. Meant for a GPU.",
)


def _cpu_preset() -> Preset:
    """A preset sized so that fitting a short clip on 2 CPU cores takes minutes.

    What was shrunk: the method is kept (6 coupling layers, the same encodings, losses and
    schedules) at about 1/500 of the cost per step: coupling MLPs 64 wide and codes 32 (the
    original: 256 and 128), a colour/density net 128 wide (512), no affine pre-layer, 16 samples
    per ray (32), 4 pairs x 128 points per step (8 x 256), 2,000 steps (100,000) with the loss
    schedules compressed in proportion and the learning rates halving every 800 steps; a
    bijection learning rate of 3e-3 (1e-4), a density bias of 2 (1), and the error cache
    refreshed at steps 800 and 1600 on every 2nd pixel.

    Why each value, and the measured step times and quality: docs/studies.md ("The cpu preset").
    """
    model = ModelConfig(
        code_dim=32, code_hidden=64, code_layers=2,
        num_coupling=6, coupling_hidden=(64, 64, 64), proj_dim=64, pe_freq=4,
        use_affine=False, color_hidden=128, color_layers=3, num_samples=16, density_bias=2.0,
    )
    train = TrainConfig(
        num_iters=2_000, num_pairs=4, num_pts=128,
        lr_feature=1e-3, lr_deform=3e-3, lr_color=1e-3,
        lr_decay_steps=800, start_interval=20, interval_growth_steps=40,
        cache_every=800, error_cache_stride=2, rgb_ramp_steps=100, rgb_weight_max=10.0,
        flow_grad_ramp_steps=5_000, dist_start=800, dist_ramp_steps=40,
        mask_near_steps=80, checkpoint_every=200,
    )
    # 256: a 100-frame clip's motion cache stays under 4 GB (at 16:9) and the fit on 2 cores
    # within minutes (benchmarks/RESULTS.md, "Real footage")
    return Preset("cpu", model, train, _cpu_preset.__doc__ or "", max_side=256)


CPU = _cpu_preset()


def _gpu_preset() -> Preset:
    """The original's model and batch for a GPU (8 pairs x 256 points x 32 samples).

    The networks, the batch, the losses and every schedule are the original's
    (``configs/default.txt``), including its 100,000 steps: no GPU run has yet measured which
    shorter schedule or lower precision reaches the original's quality, so until one does the
    step count stays the original's. The matrix products run in TF32, the precision the
    original's matmuls ran in on an A100 under PyTorch 1.10 (spec 4.4); bf16 is faster but its
    effect on quality is not measured yet. ``fit(..., compile="graph")`` (or
    ``OMNIFAST_CUDA_GRAPH=1``) runs the whole step as one CUDA graph; it is opt-in until a GPU
    run has checked it against the eager step.
    """
    return Preset("gpu", OMNIMOTION.model,
                  dataclasses.replace(OMNIMOTION.train, matmul_precision="tf32"),
                  _gpu_preset.__doc__ or "")


GPU = _gpu_preset()

PRESETS: dict[str, Preset] = {p.name: p for p in (OMNIMOTION, CPU, GPU)}


def get_preset(name: str | Preset) -> Preset:
    """Look up a preset by name (``"omnimotion"``, ``"cpu"`` or ``"gpu"``)."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def model_config_from_dict(d: dict) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    kw = {k: v for k, v in d.items() if k in known}
    if "coupling_hidden" in kw:
        kw["coupling_hidden"] = tuple(kw["coupling_hidden"])
    return ModelConfig(**kw)


__all__ = ["CPU", "GPU", "OMNIMOTION", "PRESETS", "ModelConfig", "Preset", "TrainConfig",
           "get_preset"]
