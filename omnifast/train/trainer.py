"""The optimisation loop (spec section 4.4) with checkpoints, resume and a NaN guard.

* Adam with three parameter groups (code net, bijection, colour) and a step decay of the
  learning rates, applied exactly as StepLR stepped once per iteration.
* Iterations run 1..num_iters (the original runs one extra iteration that it never saves).
* Every ``checkpoint_every`` steps, at the end, and on Ctrl-C, ``DIR/checkpoint.pt`` is written
  atomically with the model, optimizer, sampler (its random state and error cache), the random
  state of the stratified depth samples and the step, so that ``resume=True`` continues to the
  same final parameters as an uninterrupted fit with the same seed.
* A step whose loss or gradients are not finite is skipped and the last good state restored
  (the original drops into a debugger and hangs); too many in a row abort the fit.

Seeds: the networks are built with ``torch.manual_seed(1234 + seed)`` (seed 0 gives the
original's construction), the sampler's generator with ``seed`` and the stratified depths with
``seed + 1``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from omnifast.config import Preset, config_to_dict, get_preset
from omnifast.data.motion import MotionData
from omnifast.model.checkpoint import CheckpointError, _atomic_save
from omnifast.model.omnimotion import DEFAULT_SEED, OmniMotion
from omnifast.train import losses as _losses
from omnifast.train.sampler import PairSampler

TRAIN_FORMAT = "omnifast-fit"
TRAIN_FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
#: a fit aborts after this many non-finite steps in a row
MAX_BAD_STEPS = 20


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
    """

    def __init__(self, motion: MotionData, preset: str | Preset = "cpu", *,
                 iters: int | None = None, out_dir: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, seed: int = 0,
                 progress: bool = True, log: Callable[[int, dict], None] | None = None,
                 log_every: int = 10) -> None:
        motion.validate()
        self.preset = get_preset(preset)
        cfg = self.preset.train
        if iters is not None:
            if int(iters) < 0:
                raise ValueError(f"iters must be >= 0, got {iters}")
            cfg = self.preset.replace(num_iters=int(iters)).train
        self.cfg = cfg
        self.motion = motion
        self.height, self.width, self.num_frames = motion.height, motion.width, motion.num_frames
        self.device = resolve_device(device)
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
        self.base_lrs = (cfg.lr_feature, cfg.lr_deform, cfg.lr_color)
        self.optimizer = torch.optim.Adam([
            {"params": list(m.feature_mlp.parameters()), "lr": cfg.lr_feature},
            {"params": list(m.deform_mlp.parameters()), "lr": cfg.lr_deform},
            {"params": list(m.color_mlp.parameters()), "lr": cfg.lr_color},
        ], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        self.step = 0
        self.last_loss = float("nan")
        self.bad_steps = 0
        self._good: dict | None = None
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
        return {
            "format": TRAIN_FORMAT,
            "format_version": TRAIN_FORMAT_VERSION,
            "preset": self.preset.name,
            "train_config": config_to_dict(self.cfg),
            **self._identity(),
            "coords": list(self.model.deform_mlp.coords),
            "step": self.step,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "sampler": self.sampler.state_dict(),
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
        try:
            self.model.deform_mlp.set_coords(tuple(state["coords"]))
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.sampler.load_state_dict(state["sampler"])
            self.generator.set_state(state["generator"])
            self.step = int(state["step"])
            self.last_loss = float(state.get("last_loss", float("nan")))
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source} is a damaged fit checkpoint: "
                                  f"{str(exc).splitlines()[0]}") from None

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

    # ------------------------------------------------------------------ NaN guard
    def _snapshot(self) -> None:
        """Keep a copy of the parameters and Adam moments (plain tensor clones: cheap)."""
        params = list(self.model.parameters())
        state = self.optimizer.state
        self._good = {
            "params": [p.detach().clone() for p in params],
            "optim": [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in state[p].items()}
                      if p in state else None for p in params],
        }

    @torch.no_grad()
    def _restore(self) -> None:
        if self._good is None:
            return
        params = list(self.model.parameters())
        for p, saved, opt in zip(params, self._good["params"], self._good["optim"]):
            p.copy_(saved)
            if opt is None:
                self.optimizer.state.pop(p, None)
            else:
                self.optimizer.state[p] = {k: (v.clone() if torch.is_tensor(v) else v)
                                           for k, v in opt.items()}

    def _all_finite(self, tensors) -> bool:
        flags = [torch.isfinite(t).all() for t in tensors if t is not None]
        return bool(torch.stack(flags).all()) if flags else True

    # ------------------------------------------------------------------ error cache
    @torch.no_grad()
    def update_error_cache(self) -> np.ndarray:
        """Predicted adjacent flows -> the sampler's hard-mining maps (spec 2.8).

        With ``error_cache_stride`` s > 1 the flows are predicted on every s-th pixel only and
        upsampled (nearest), which divides this cost by s^2 (a cpu-preset economy; the
        original predicts every pixel).
        """
        from omnifast.track import Tracker  # noqa: PLC0415 (track imports the model layer)

        tracker = Tracker(self.model, self.height, self.width, device=self.device)
        n, h, w = self.num_frames, self.height, self.width
        stride = max(1, self.cfg.error_cache_stride)
        pred = []
        for k in range(n):
            flow = tracker.correspondence(k, PairSampler.adjacent_partner(k, n),
                                          with_occlusion=False, stride=stride)[0]
            if stride > 1:  # nearest-neighbour upsampling of the coarse flow
                flow = flow.repeat(stride, axis=0).repeat(stride, axis=1)[:h, :w]
            pred.append(flow)
        pred = np.stack(pred)
        self.model.train()
        return self.sampler.set_error_cache(pred)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float] | None:
        """Run iteration ``self.step + 1``. Returns the loss terms, or None if it was skipped."""
        s = self.step + 1
        factor = _losses.learning_rate_factor(s, self.cfg)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        batch = self.sampler.sample(self.step).to(self.device)
        self.model.train()
        total, terms = _losses.compute_losses(self.model, batch, s, self.cfg, self.height,
                                              self.width, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        ok = bool(torch.isfinite(total))
        if ok:
            total.backward()
            ok = self._all_finite(p.grad for p in self.model.parameters())
        if ok:
            self.optimizer.step()
            ok = self._all_finite(self.model.parameters())
        self.step = s
        if not ok:
            self.optimizer.zero_grad(set_to_none=True)
            self._restore()
            self.bad_steps += 1
            warnings.warn(f"step {s}: non-finite loss or gradients; step skipped and the last "
                          "good state restored", RuntimeWarning, stacklevel=2)
            if self.bad_steps >= MAX_BAD_STEPS:
                raise FitError(f"the fit produced non-finite values in {self.bad_steps} steps "
                               f"in a row (last at step {s}); giving up")
            return None
        self.bad_steps = 0
        self._snapshot()
        out = {k: float(v) for k, v in terms.items()}
        out["loss"] = self.last_loss = float(total.detach())
        return out

    # ------------------------------------------------------------------ the loop
    @contextlib.contextmanager
    def _sigint_to_flag(self):
        """Turn the first Ctrl-C into a stop request honoured after the current step."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            self._stop.set()
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C stops at once

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def run(self, resume: bool = False) -> OmniMotion:
        """Optimise up to ``num_iters`` steps (continuing from the checkpoint with ``resume``).

        Raises:
            FitInterrupted: on Ctrl-C, after saving the checkpoint.
            FitError: too many non-finite steps in a row.
        """
        if resume:
            self.resume()
        total = self.cfg.num_iters
        self._snapshot()
        bar = None
        if self.progress and self.step < total:
            from tqdm.auto import tqdm  # noqa: PLC0415

            bar = tqdm(total=total, initial=self.step, desc="fit", unit="step",
                       dynamic_ncols=True, mininterval=0.5)
        t_start = time.time()
        try:
            with self._sigint_to_flag():
                while self.step < total:
                    terms = self.train_step()
                    s = self.step
                    if (self.cfg.use_error_map and self.cfg.cache_every > 0
                            and s % self.cfg.cache_every == 0 and s < total):
                        if bar is not None:
                            bar.set_postfix_str("computing the error cache", refresh=True)
                        self.update_error_cache()
                    if self.checkpoint_path and (s % self.cfg.checkpoint_every == 0 or s == total):
                        self.save()
                    if bar is not None:
                        bar.update(1)
                        if terms is not None:
                            bar.set_postfix(loss=f"{terms['loss']:.4f}", refresh=False)
                    if self.log is not None and terms is not None and (
                            s % self.log_every == 0 or s == total):
                        lrs = {f"lr/{name}": g["lr"] for name, g in
                               zip(("feature", "deform", "color"), self.optimizer.param_groups)}
                        self.log(s, {**{f"loss/{k}": v for k, v in terms.items()}, **lrs})
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
        self.elapsed = time.time() - t_start
        if self.checkpoint_path and not os.path.exists(self.checkpoint_path):
            self.save()
        self.model.eval()
        return self.model
