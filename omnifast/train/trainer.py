"""The optimisation loop (spec section 4.4) with checkpoints, resume and a NaN guard.

* Adam with three parameter groups (code net, bijection, colour) and a step decay of the
  learning rates, applied exactly as StepLR stepped once per iteration.
* Iterations run 1..num_iters (the original runs one extra iteration that it never saves).
* Every ``checkpoint_every`` steps, at the end, and on Ctrl-C, ``DIR/checkpoint.pt`` is written
  atomically with the model, optimizer, sampler (its random state and error cache), the random
  state of the stratified depth samples and the step, so that ``resume=True`` continues to the
  same final parameters as an uninterrupted fit with the same seed.
* A step whose loss or gradients are not finite is skipped on the device: Adam's update is
  masked out (as AMP's gradient scaler does), so parameters and moments stay as they were.
  The count is read back with the losses every few steps (the original drops into a debugger
  and hangs); too many in a row abort the fit.
* The step itself is sync-free and has fixed shapes (see :mod:`omnifast.train.losses`): its
  losses stay on the device and are read back every ``log_every`` steps. On CUDA the whole
  step (forward, losses, backward, Adam) can be captured once as a CUDA graph and replayed
  (:class:`CudaGraphStep`; ``compile="graph"`` or ``OMNIFAST_CUDA_GRAPH=1``: opt-in until a
  GPU run has checked its parity with the eager step); the eager step is the default, the
  fallback and the oracle. ``compile=
  "compile"`` runs the forward and losses through ``torch.compile`` instead.

Seeds: the networks are built with ``torch.manual_seed(1234 + seed)`` (seed 0 gives the
original's construction), the sampler's generator with ``seed`` and the stratified depths with
``seed + 1``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from omnifast.config import Preset, config_to_dict, get_preset
from omnifast.data.motion import MotionData
from omnifast.interrupt import ctrl_c_sets
from omnifast.model.checkpoint import CheckpointError, _atomic_save
from omnifast.model.omnimotion import DEFAULT_SEED, OmniMotion
from omnifast.model.rays import Rays
from omnifast.precision import PRECISIONS, matmul_precision
from omnifast.train import losses as _losses
from omnifast.train.sampler import Batch, BatchPrefetcher, PairSampler

TRAIN_FORMAT = "omnifast-fit"
TRAIN_FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
#: a fit aborts after this many non-finite steps in a row
MAX_BAD_STEPS = 20
#: step modes: the eager step, one CUDA graph per step, torch.compile of the forward
STEP_MODES = ("eager", "graph", "compile")


class FitError(RuntimeError):
    """The optimisation cannot go on (for example it keeps producing NaN)."""


class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C during a fit; the checkpoint of the last finished step was written first."""

    def __init__(self, step: int, path: str | None) -> None:
        self.step, self.path = step, path
        where = (f"; checkpoint saved to {path}, rerun with --resume (resume=True) to continue"
                 if path else "")
        super().__init__(f"fit interrupted at step {step}{where}")


def frames_digest(frames: np.ndarray) -> str:
    """Short content hash of a clip's frames (ties a checkpoint to its video)."""
    h = hashlib.sha1()
    h.update(str(tuple(frames.shape)).encode())
    h.update(np.ascontiguousarray(frames).tobytes())
    return h.hexdigest()[:16]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when available; an unavailable CUDA request is a ValueError."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available here "
                         "(use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use cpu or cuda")
    return dev


def resolve_step_mode(compile: str | bool | None, device: torch.device) -> str:
    """How the training step runs (one of :data:`STEP_MODES`).

    Args:
        compile: ``"eager"``, ``"graph"`` (the whole step captured as one CUDA graph, CUDA
            only), ``"compile"`` (the forward and losses through ``torch.compile``), or None /
            ``"auto"``: ``"graph"`` on CUDA when ``OMNIFAST_CUDA_GRAPH=1``, else ``"eager"``
            (the graph is opt-in until a GPU run has checked it against the eager step).
            True / False stand for ``"auto"`` / ``"eager"``.
        device: the fit's device.
    """
    if compile is None or compile is True or compile == "auto":
        on = os.environ.get("OMNIFAST_CUDA_GRAPH", "0").strip().lower() not in ("0", "false", "")
        return "graph" if device.type == "cuda" and on else "eager"
    mode = "eager" if compile is False else str(compile).lower()
    if mode not in STEP_MODES:
        raise ValueError(f"unknown step mode {compile!r}; choose auto, {', '.join(STEP_MODES)}")
    if mode == "graph" and device.type != "cuda":
        raise ValueError("compile='graph' captures the step as a CUDA graph and needs a CUDA "
                         "device; use 'eager' or 'compile' on the CPU")
    return mode


def prepare_compile() -> None:
    """Let ``torch.compile`` trace through the backend dispatch.

    The backend and matmul-precision switches live in context variables, which dynamo cannot
    trace; they are read once at trace time instead (``assume_constant_result``), so a compiled
    step keeps the backend and precision it was compiled under.
    """
    import torch._dynamo  # noqa: PLC0415 (only when compiling)

    from omnifast import dispatch  # noqa: PLC0415

    torch._dynamo.assume_constant_result(dispatch.get_backend)
    torch._dynamo.assume_constant_result(dispatch.get_matmul_precision)


class CudaGraphStep:
    """The whole training step (forward, losses, backward, Adam) captured as one CUDA graph.

    What changes between steps lives in device tensors the graph reads: the batch and the depth
    noise (copied and drawn into fixed buffers before each replay), the step number (which
    gives the loss weights) and the learning rates. The number of masked near samples and
    whether the distortion term is on are baked in (the trainer keeps one graph per pair of
    values). Capture first runs a few warm-up steps on a side stream with the update forced
    off, so that they change nothing, then records one step.

    Args:
        trainer: the trainer whose step is captured.
        batch: a batch of the fit's shapes (its values are not used).
        step: an iteration with the structure (:meth:`Trainer._graph_key`) this graph is for.
    """

    WARMUP = 3

    def __init__(self, trainer: Trainer, batch: Batch, step: int) -> None:
        dev = trainer.device
        self.trainer = trainer
        self.batch = Batch(**{k: torch.empty(getattr(batch, k).shape, device=dev,
                                             dtype=getattr(batch, k).dtype)
                              for k in Batch.__dataclass_fields__}).copy_(batch)
        p, n = batch.pts1.shape[:2]
        self.noise = torch.full((p, n, trainer.model.config.num_samples), 0.5, device=dev,
                                dtype=trainer.model.param_dtype)
        kept = [t.clone() for t in trainer._counters()]
        try:
            trainer._force_skip.fill_(1.0)
            side = torch.cuda.Stream(device=dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP):
                    trainer._step_body(self.batch, self.noise, step)
            torch.cuda.current_stream(dev).wait_stream(side)
            trainer._force_skip.fill_(0.0)
            self.graph = torch.cuda.CUDAGraph()
            trainer.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                trainer._step_body(self.batch, self.noise, step)
        finally:  # the warm-up steps leave no trace, whether the capture worked or not
            trainer._force_skip.fill_(0.0)
            for t, v in zip(trainer._counters(), kept):
                t.copy_(v)

    def run(self, batch: Batch, generator: torch.Generator) -> None:
        """Replay the step on ``batch`` (host or device tensors; copied without a sync)."""
        self.batch.copy_(batch, non_blocking=True)
        self.noise.uniform_(0.0, 1.0, generator=generator)  # the stream torch.rand draws
        self.graph.replay()


class Trainer:
    """Fits an :class:`~omnifast.model.OmniMotion` to one clip's frames and motion.

    Args:
        motion: frames and filtered pairwise flows.
        preset: preset name or object (network sizes and schedule).
        iters: number of iterations (default: the preset's ``num_iters``).
        out_dir: folder for ``checkpoint.pt`` (no checkpoints when ``None``).
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
        seed: seed of the networks, the sampler and the depth samples.
        progress: show a progress bar (step, loss, time left).
        log: optional callback ``log(step, scalars: dict)`` called every ``log_every`` steps.
        log_every: steps between reads of the losses from the device (and log calls).
        compile: how the step runs, see :func:`resolve_step_mode` (default: eager; one CUDA
            graph per step on CUDA with ``OMNIFAST_CUDA_GRAPH=1``).
        prefetch: draw the next batch in a worker thread while a step runs (default: on CUDA).
    """

    def __init__(self, motion: MotionData, preset: str | Preset = "cpu", *,
                 iters: int | None = None, out_dir: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, seed: int = 0,
                 progress: bool = True, log: Callable[[int, dict], None] | None = None,
                 log_every: int = 10, compile: str | bool | None = None,
                 prefetch: bool | None = None) -> None:
        motion.validate()
        self.preset = get_preset(preset)
        cfg = self.preset.train
        if iters is not None:
            if int(iters) < 0:
                raise ValueError(f"iters must be >= 0, got {iters}")
            cfg = self.preset.replace(num_iters=int(iters)).train
        if cfg.matmul_precision is not None and cfg.matmul_precision not in PRECISIONS:
            raise ValueError(f"matmul_precision must be one of {', '.join(PRECISIONS)} or None, "
                             f"got {cfg.matmul_precision!r}")
        self.cfg = cfg
        self.motion = motion
        self.height, self.width, self.num_frames = motion.height, motion.width, motion.num_frames
        self.device = resolve_device(device)
        self.step_mode = resolve_step_mode(compile, self.device)
        self.prefetch = self.device.type == "cuda" if prefetch is None else bool(prefetch)
        self.seed = int(seed)
        self.out_dir = os.fspath(out_dir) if out_dir is not None else None
        self.progress = progress
        self.log, self.log_every = log, max(1, int(log_every))
        self.digest = frames_digest(motion.frames)

        self.model = OmniMotion(self.preset.model, self.num_frames,
                                seed=DEFAULT_SEED + self.seed).to(self.device)
        self.sampler = PairSampler(motion, cfg, seed=self.seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed + 1)
        m = self.model
        cuda = self.device.type == "cuda"
        self.base_lrs = (cfg.lr_feature, cfg.lr_deform, cfg.lr_color)
        # fused Adam: one kernel per step, honours found_inf (the masked update of a
        # non-finite step); on CUDA capturable, with the learning rates in device tensors
        self.optimizer = torch.optim.Adam([
            {"params": list(m.feature_mlp.parameters()), "lr": cfg.lr_feature},
            {"params": list(m.deform_mlp.parameters()), "lr": cfg.lr_deform},
            {"params": list(m.color_mlp.parameters()), "lr": cfg.lr_color},
        ], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True, capturable=cuda)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._lr_tensors = ([torch.tensor(lr, dtype=torch.float32, device=self.device)
                             for lr in self.base_lrs] if cuda else None)
        # the step's device-side state: it is read back only every few steps
        dev, f32 = self.device, torch.float32
        self._step_t = torch.zeros((), dtype=torch.int64, device=dev)
        self._found_inf = torch.zeros((), dtype=f32, device=dev)
        self._force_skip = torch.zeros((), dtype=f32, device=dev)
        self._bad_run = torch.zeros((), dtype=f32, device=dev)
        self._skipped = torch.zeros((), dtype=f32, device=dev)
        self._last = torch.zeros(len(_losses.TERM_NAMES) + 1, dtype=f32, device=dev)
        self._one = torch.ones((), dtype=f32, device=dev)
        self.optimizer.found_inf = self._found_inf
        self._conform_optimizer()
        self._graphs: dict[tuple[int, bool], CudaGraphStep] = {}
        self._compiled = None
        self._prefetcher: BatchPrefetcher | None = None
        self._read_step = 0
        self.step = 0
        self.last_loss = float("nan")
        self.bad_steps = 0
        self._stop = threading.Event()

    # ------------------------------------------------------------------ checkpoint
    @property
    def checkpoint_path(self) -> str | None:
        return os.path.join(self.out_dir, CHECKPOINT_NAME) if self.out_dir else None

    def _identity(self) -> dict:
        return {"num_frames": self.num_frames, "height": self.height, "width": self.width,
                "video_digest": self.digest, "model_config": config_to_dict(self.preset.model),
                "seed": self.seed}

    def state_dict(self) -> dict:
        optim = copy.deepcopy(self.optimizer.state_dict())
        for group in optim["param_groups"]:  # device learning-rate tensors are saved as floats
            if torch.is_tensor(group["lr"]):
                group["lr"] = float(group["lr"])
        sampler = (self._prefetcher.sampler_state() if self._prefetcher is not None
                   else self.sampler.state_dict())
        return {
            "format": TRAIN_FORMAT,
            "format_version": TRAIN_FORMAT_VERSION,
            "preset": self.preset.name,
            "train_config": config_to_dict(self.cfg),
            **self._identity(),
            "coords": list(self.model.deform_mlp.coords),
            "step": self.step,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": optim,
            "sampler": sampler,
            "generator": self.generator.get_state().cpu(),
            "last_loss": self.last_loss,
        }

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
            raise CheckpointError(f"{source} is not an omnifast fit checkpoint")
        if state.get("format_version", 0) > TRAIN_FORMAT_VERSION:
            raise CheckpointError(f"{source} was written by a newer omnifast")
        mine = self._identity()
        for key in ("num_frames", "height", "width", "video_digest", "model_config", "seed"):
            if state.get(key) != mine[key]:
                raise CheckpointError(
                    f"{source} belongs to another fit ({key} differs: {state.get(key)!r} vs "
                    f"{mine[key]!r}); use a new output folder or the same video, preset and seed")
        if self._prefetcher is not None:
            self._prefetcher.drain()
        try:
            self.model.deform_mlp.set_coords(tuple(state["coords"]))
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self._conform_optimizer()
            self.sampler.load_state_dict(state["sampler"])
            self.generator.set_state(state["generator"])
            self.step = int(state["step"])
            self.last_loss = float(state.get("last_loss", float("nan")))
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source} is a damaged fit checkpoint: "
                                  f"{str(exc).splitlines()[0]}") from None

    def _conform_optimizer(self) -> None:
        """Fused (and on CUDA capturable) Adam with the trainer's learning-rate tensors, also
        after loading an optimizer state saved with other settings; drops captured graphs,
        which point at the replaced state tensors."""
        cuda = self.device.type == "cuda"
        for i, group in enumerate(self.optimizer.param_groups):
            group.update(fused=True, capturable=cuda, foreach=None)
            if self._lr_tensors is not None:
                self._lr_tensors[i].fill_(float(group["lr"]))
                group["lr"] = self._lr_tensors[i]
        for st in self.optimizer.state.values():
            if "step" in st:
                st["step"] = torch.as_tensor(st["step"]).to(self.device, torch.float32)
        self._lr_factor: float | None = None
        if hasattr(self, "_graphs"):
            self._graphs.clear()

    def save(self) -> str | None:
        """Write ``checkpoint.pt`` atomically (temporary file, then rename)."""
        path = self.checkpoint_path
        if path is not None:
            _atomic_save(self.state_dict(), path)
        return path

    def resume(self) -> bool:
        """Load ``checkpoint.pt`` if there is one. Returns whether a checkpoint was loaded."""
        path = self.checkpoint_path
        if path is None:
            raise ValueError("resume needs an output folder (out_dir)")
        if not os.path.exists(path):
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 (any unpickling failure means a bad file)
            raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__})"
                                  ) from None
        self.load_state_dict(state, source=path)
        return True

    # ------------------------------------------------------------------ error cache
    @torch.no_grad()
    def update_error_cache(self) -> np.ndarray:
        """Predicted adjacent flows -> the sampler's hard-mining maps (spec 2.8).

        With ``error_cache_stride`` s > 1 the flows are predicted on every s-th pixel only and
        upsampled (nearest), which divides this cost by s^2 (a cpu-preset economy; the
        original predicts every pixel).
        """
        if self._prefetcher is not None:  # the batch drawn ahead used the old maps
            self._prefetcher.drain()
        self.model.eval()
        rays = Rays(self.model, self.height, self.width)
        n, h, w = self.num_frames, self.height, self.width
        stride = max(1, self.cfg.error_cache_stride)
        pred = []
        for k in range(n):
            flow = rays.flow(k, PairSampler.adjacent_partner(k, n), with_occlusion=False,
                             stride=stride)[0].float().cpu().numpy()
            if stride > 1:  # nearest-neighbour upsampling of the coarse flow
                flow = flow.repeat(stride, axis=0).repeat(stride, axis=1)[:h, :w]
            pred.append(flow)
        pred = np.stack(pred)
        self.model.train()
        return self.sampler.set_error_cache(pred)

    # ------------------------------------------------------------------ one step
    def _counters(self) -> list[torch.Tensor]:
        return [self._found_inf, self._bad_run, self._skipped, self._last]

    def _precision(self):
        p = self.cfg.matmul_precision
        return matmul_precision(p) if p is not None else contextlib.nullcontext()

    def _set_learning_rate(self, step: int) -> None:
        factor = _losses.learning_rate_factor(step, self.cfg)
        if factor == self._lr_factor:
            return
        for i, (group, base) in enumerate(zip(self.optimizer.param_groups, self.base_lrs)):
            if self._lr_tensors is not None:  # read by the kernels (and a captured graph)
                self._lr_tensors[i].fill_(base * factor)
            else:
                group["lr"] = base * factor
        self._lr_factor = factor

    def learning_rates(self) -> list[float]:
        """The current learning rate of each parameter group."""
        return [self.base_lrs[i] * (self._lr_factor if self._lr_factor is not None else
                                     _losses.learning_rate_factor(max(self.step, 1), self.cfg))
                for i in range(len(self.base_lrs))]

    def _step_body(self, batch: Batch, noise: torch.Tensor, step: int) -> None:
        """Forward, losses, backward and the (masked) Adam update of iteration ``step``, with
        no host read: eager, captured into a CUDA graph, or with a compiled forward."""
        weights = _losses.loss_weight_tensor(self._step_t, self.cfg, noise.dtype)
        if self._compiled is not None:
            total, terms = self._compiled(
                self.model, batch, noise, weights, self.cfg, self.height, self.width,
                *self._graph_key(step))
        else:
            total, terms = _losses.compute_losses(self.model, batch, step, self.cfg,
                                                  self.height, self.width, noise=noise,
                                                  weights=weights)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        found = self._found_inf
        found.copy_(torch.maximum(self._force_skip,
                                  (~torch.isfinite(total.detach())).to(found.dtype)))
        grads = [p.grad for p in self._params if p.grad is not None]
        if grads:  # sets found to 1 on a non-finite gradient (and multiplies them by 1)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, self._one)
        self.optimizer.step()  # fused Adam skips every update when found_inf is 1
        self._bad_run.mul_(found).add_(found)
        self._skipped.add_(found)
        self._last.copy_(torch.stack([*(terms[k] for k in _losses.TERM_NAMES),
                                      total.detach()]).to(self._last.dtype))

    def _next_batch(self, index: int) -> Batch:
        if not self.prefetch:
            return self.sampler.sample(index)
        if self._prefetcher is None:
            self._prefetcher = BatchPrefetcher(self.sampler, pin=self.device.type == "cuda")
        return self._prefetcher.take(index)

    def _graph_key(self, step: int) -> tuple[int, bool]:
        """What the schedule changes in the step's structure: the masked near samples and
        whether the distortion term is on (one graph per value, at most four per fit)."""
        return (_losses.masked_near_samples(step, self.cfg, self.model.config.num_samples),
                _losses.distortion_on(step, self.cfg))

    def _graph_for(self, batch: Batch, step: int) -> CudaGraphStep | None:
        near = self._graph_key(step)
        graph = self._graphs.get(near)
        if graph is None:
            if self._prefetcher is not None:  # no host-memory pinning while capturing
                self._prefetcher.wait()
            try:
                graph = self._graphs[near] = CudaGraphStep(self, batch, step)
            except Exception as exc:  # noqa: BLE001 (any capture failure: run eagerly)
                self.optimizer.zero_grad(set_to_none=True)
                self._force_skip.fill_(0.0)
                self.step_mode = "eager"
                why = (str(exc).splitlines() or [""])[0]
                warnings.warn(f"capturing the training step as a CUDA graph failed "
                              f"({type(exc).__name__}: {why}); running the eager step instead",
                              RuntimeWarning, stacklevel=3)
                return None
        return graph

    def train_step(self, read: bool = False) -> dict[str, float] | None:
        """Run iteration ``self.step + 1``, without reading anything back from the device.

        Args:
            read: read the step's losses back (a host sync) and return them.

        Returns:
            with ``read``, the loss terms and ``"loss"`` (None when the step was skipped as
            non-finite); else None.

        Raises:
            FitError: with ``read``, too many non-finite steps in a row.
        """
        s = self.step + 1
        self._set_learning_rate(s)
        batch = self._next_batch(self.step)
        if not self.model.training:
            self.model.train()
        if self.step_mode == "compile" and self._compiled is None:
            prepare_compile()
            backend = os.environ.get("OMNIFAST_COMPILE_BACKEND", "inductor")
            self._compiled = torch.compile(_losses.step_losses, dynamic=False, backend=backend)
        with self._precision():
            self._step_t.fill_(s)
            graph = self._graph_for(batch, s) if self.step_mode == "graph" else None
            if graph is not None:
                graph.run(batch, self.generator)
            else:
                batch = batch.to(self.device, non_blocking=True)
                noise = _losses.draw_depth_noise(self.model, tuple(batch.pts1.shape[:2]),
                                                 self.generator, self.device)
                self._step_body(batch, noise, s)
        self.step = s
        return self.read_back() if read else None

    def read_back(self) -> dict[str, float] | None:
        """Read the last step's losses and the skipped-step counters (one host sync).

        Warns about the steps skipped since the last read and raises :class:`FitError` after
        ``MAX_BAD_STEPS`` non-finite steps in a row.

        Returns:
            the last step's loss terms and ``"loss"``, or None when it was skipped.
        """
        counts = torch.stack([self._found_inf, self._bad_run, self._skipped])
        values = torch.cat([self._last, counts]).tolist()
        self._skipped.zero_()
        *terms, total, found, bad_run, skipped = values
        since, self._read_step = self._read_step, self.step
        self.bad_steps = int(bad_run)
        if skipped:
            warnings.warn(f"step {self.step}: non-finite loss or gradients in {int(skipped)} of "
                          f"steps {since + 1}-{self.step}; those steps were skipped (their "
                          "update masked out, the state left as it was)", RuntimeWarning,
                          stacklevel=2)
        if self.bad_steps >= MAX_BAD_STEPS:
            raise FitError(f"the fit produced non-finite values in {self.bad_steps} steps "
                           f"in a row (last at step {self.step}); giving up")
        if found:
            return None
        out = dict(zip(_losses.TERM_NAMES, terms))
        out["loss"] = self.last_loss = total
        return out

    # ------------------------------------------------------------------ the loop
    def run(self, resume: bool = False) -> OmniMotion:
        """Optimise up to ``num_iters`` steps (continuing from the checkpoint with ``resume``).

        The losses are read back from the device every ``min(log_every, MAX_BAD_STEPS)`` steps,
        at checkpoints and at the end; nothing else waits for the device.

        Raises:
            FitInterrupted: on Ctrl-C, after saving the checkpoint.
            FitError: too many non-finite steps in a row.
        """
        if resume:
            self.resume()
        total = self.cfg.num_iters
        self._read_step = self.step
        check_every = max(1, min(self.log_every, MAX_BAD_STEPS))
        bar = None
        if self.progress and self.step < total:
            from tqdm.auto import tqdm  # noqa: PLC0415

            bar = tqdm(total=total, initial=self.step, desc="fit", unit="step",
                       dynamic_ncols=True, mininterval=0.5)
        t_start = time.time()
        try:
            with ctrl_c_sets(self._stop):
                while self.step < total:
                    self.train_step()
                    s = self.step
                    checkpoint = bool(self.checkpoint_path) and (
                        s % self.cfg.checkpoint_every == 0 or s == total)
                    if s % check_every == 0 or s == total or checkpoint:
                        terms = self.read_back()
                        if bar is not None and terms is not None:
                            bar.set_postfix(loss=f"{terms['loss']:.4f}", refresh=False)
                        if self.log is not None and terms is not None and (
                                s % self.log_every == 0 or s == total):
                            lrs = {f"lr/{name}": lr for name, lr in
                                   zip(("feature", "deform", "color"), self.learning_rates())}
                            self.log(s, {**{f"loss/{k}": v for k, v in terms.items()}, **lrs})
                    if (self.cfg.use_error_map and self.cfg.cache_every > 0
                            and s % self.cfg.cache_every == 0 and s < total):
                        if bar is not None:
                            bar.set_postfix_str("computing the error cache", refresh=True)
                        self.update_error_cache()
                    if checkpoint:
                        self.save()
                    if bar is not None:
                        bar.update(1)
                    if self._stop.is_set():
                        self._stop.clear()
                        path = self.save()
                        raise FitInterrupted(self.step, path)
        except KeyboardInterrupt as exc:
            if isinstance(exc, FitInterrupted):
                raise
            # a second Ctrl-C (or one outside the main thread): the step may be half done, so
            # keep the last checkpoint on disk as it is
            raise FitInterrupted(self.step, None) from None
        finally:
            if bar is not None:
                bar.close()
            if self._prefetcher is not None:
                self._prefetcher.close()
                self._prefetcher = None
        self.elapsed = time.time() - t_start
        if self.checkpoint_path and not os.path.exists(self.checkpoint_path):
            self.save()
        self.model.eval()
        return self.model
