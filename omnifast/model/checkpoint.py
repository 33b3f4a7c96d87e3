"""Checkpoints: the original OmniMotion format (read) and omnifast's own (read and write)."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping

import torch

from omnifast.config import ModelConfig, config_to_dict, model_config_from_dict
from omnifast.files import atomic_write
from omnifast.model.omnimotion import DEFAULT_SEED, OmniMotion

FORMAT = "omnifast"
FORMAT_VERSION = 1
_NETS = ("feature_mlp", "deform_mlp", "color_mlp")


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of the expected kind."""


def _torch_load(path: str | os.PathLike) -> object:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 (any unpickling failure means a bad file)
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _count(prefix_re: str, keys) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(prefix_re, k))}
    return max(idx) + 1 if idx else 0


def infer_model_config(feature: Mapping, deform: Mapping, color: Mapping) -> ModelConfig:
    """Read the network sizes off original state dicts (widths, depths, affine on/off)."""
    try:
        code_hidden = feature["linear.0.weight"].shape[0]
        code_dim = feature["output_linear.weight"].shape[0]
        code_layers = _count(r"linear\.(\d+)\.weight", feature)
        n_coupling = _count(r"layers1\.(\d+)\.", deform)
        st_keys = [k for k in deform if k.startswith("layers1.0.map_st.0.mlp.")
                   and k.endswith(".weight")]
        st_shapes = [deform[k].shape for k in sorted(st_keys, key=lambda k: int(k.split(".")[5]))]
        proj_w = deform["layers1.0.projection.proj.0.weight"]
        proj_dim, enc_dim = proj_w.shape
        pe_freq = (enc_dim - 2) // 4
        hidden = tuple(s[0] for s in st_shapes[:-1])
        use_affine = any(k.startswith("affine_mlp.") for k in deform)
        affine_layers = _count(r"affine_mlp\.hidden\.(\d+)\.", deform) if use_affine else 8
        affine_hidden = deform["affine_mlp.hidden.0.0.weight"].shape[0] if use_affine else 256
        color_hidden = color["linear.0.weight"].shape[0]
        color_layers = _count(r"linear\.(\d+)\.weight", color)
    except (KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(
            f"state dicts do not look like OmniMotion's (missing {exc})") from None
    if st_shapes[0][1] != code_dim + proj_dim:
        raise CheckpointError("coupling input width does not match code + projection widths")
    return ModelConfig(
        code_dim=code_dim, code_hidden=code_hidden, code_layers=code_layers,
        num_coupling=n_coupling, coupling_hidden=hidden, proj_dim=proj_dim, pe_freq=pe_freq,
        use_affine=use_affine, affine_hidden=affine_hidden, affine_layers=affine_layers,
        color_hidden=color_hidden, color_layers=color_layers,
    )


@torch.no_grad()
def _choose_coords_by_image(model: OmniMotion, image: torch.Tensor, num_rays: int = 2048
                            ) -> tuple[int, ...]:
    """Try every pair of permutations of (0, 1, 2) and keep the one rendering ``image`` best."""
    from omnifast.model.geometry import sample_depths, unproject  # noqa: PLC0415
    from omnifast.ops import composite  # noqa: PLC0415

    h, w = image.shape[:2]
    gen = torch.Generator().manual_seed(0)
    ys = torch.randint(0, h, (num_rays,), generator=gen)
    xs = torch.randint(0, w, (num_rays,), generator=gen)
    target = image[ys, xs].float()
    px = torch.stack([xs, ys], -1).float()
    cfg = model.config
    depths = sample_depths((), cfg.num_samples, cfg.min_depth, cfg.max_depth)
    x = unproject(px, depths, h, w)[None]  # [1, R, K, 3]
    best, best_err = None, float("inf")
    perms = list(itertools.permutations(range(3)))
    for p1, p2 in itertools.product(perms, perms):
        coords = ((p1 + p2) * cfg.num_coupling)[: cfg.num_coupling]
        model.deform_mlp.set_coords(coords)
        u = model.to_canonical(x, torch.zeros(1, dtype=torch.long))
        rgb, sigma = model.color_density(u)
        out, _ = composite(sigma, rgb)
        err = (out[0] - target).square().mean().item()
        if err < best_err:
            best, best_err = coords, err
    return best


def load_omnimotion_checkpoint(path: str | os.PathLike, *, coords: tuple[int, ...] | None = None,
                               reference_image=None) -> OmniMotion:
    """Load a checkpoint written by the original OmniMotion code, on the CPU.

    Accepts the original's ``torch.save`` dict (``feature_mlp``, ``deform_mlp``, ``color_mlp``,
    ``num_imgs``, optionally ``optimizer`` / ``scheduler``, which are ignored here) from any
    device. Network sizes and the affine pre-layer are inferred from the keys. Checkpoints
    written before the coupling masks became buffers have no ``layers1.*.mask`` keys; their
    coordinates are then ``coords`` if given, else chosen by rendering ``reference_image`` (frame
    0, ``[H, W, 3]`` in [0, 1]) under all 36 candidates, else those of the original's seeded
    construction for these sizes (y, x, z, y, x, z at the default sizes).

    Returns:
        an :class:`~omnifast.model.OmniMotion` in eval mode on the CPU.
    """
    ckpt = _torch_load(path)
    if not isinstance(ckpt, Mapping) or not all(k in ckpt for k in _NETS):
        raise CheckpointError(f"{path} is not an OmniMotion checkpoint (expected the keys "
                              f"{', '.join(_NETS)}, num_imgs)")
    if ckpt.get("format") == FORMAT:
        raise CheckpointError(f"{path} is an omnifast checkpoint; use omnifast.load_checkpoint")
    num_frames = int(ckpt.get("num_imgs", 0))
    if num_frames < 1:
        raise CheckpointError(f"{path} has no valid num_imgs entry")
    feature, deform, color = (ckpt[k] for k in _NETS)
    cfg = infer_model_config(feature, deform, color)
    has_masks = all(f"layers1.{i}.mask" in deform for i in range(cfg.num_coupling))
    # Without mask buffers, the seeded construction (seed 1234, the original's order of random
    # draws) regenerates the coordinates the original code would have drawn for these sizes.
    model = OmniMotion(cfg, num_frames, seed=DEFAULT_SEED if not has_masks else None)
    model.feature_mlp.load_state_dict(feature)
    model.color_mlp.load_state_dict(color)
    missing, unexpected = model.deform_mlp.load_state_dict(deform, strict=False)
    missing = [k for k in missing if not k.endswith(".mask")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: deform_mlp keys do not match (missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]})")
    model.eval()
    if not has_masks:
        if coords is not None:
            model.deform_mlp.set_coords(tuple(coords))
        elif reference_image is not None:
            img = torch.as_tensor(reference_image)
            if img.dtype == torch.uint8:
                img = img.float() / 255.0
            model.deform_mlp.set_coords(_choose_coords_by_image(model, img))
    return model


def _atomic_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`omnifast.files.atomic_write`: never a half-written file."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(model: OmniMotion, path: str | os.PathLike, **extra) -> None:
    """Save model weights, config and number of frames (plus ``extra`` entries), atomically."""
    obj = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(model.config),
        "num_frames": model.num_frames,
        "coords": list(model.deform_mlp.coords),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    _atomic_save(obj, path)


def load_checkpoint(path: str | os.PathLike, with_extra: bool = False):
    """Load an omnifast checkpoint written by :func:`save_checkpoint` (on the CPU).

    Returns:
        the model, or ``(model, extra dict)`` with ``with_extra=True``.
    """
    ckpt = _torch_load(path)
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != FORMAT:
        if isinstance(ckpt, Mapping) and all(k in ckpt for k in _NETS):
            raise CheckpointError(f"{path} is an original OmniMotion checkpoint; use "
                                  "omnifast.load_omnimotion_checkpoint")
        raise CheckpointError(f"{path} is not an omnifast checkpoint")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer omnifast (format "
                              f"{ckpt['format_version']})")
    try:
        cfg = model_config_from_dict(ckpt["config"])
        model = OmniMotion(cfg, int(ckpt["num_frames"]), seed=None, coords=tuple(ckpt["coords"]))
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is a damaged omnifast checkpoint: {exc}") from None
    model.eval()
    if with_extra:
        extra = {k: v for k, v in ckpt.items()
                 if k not in ("format", "format_version", "config", "num_frames", "coords",
                              "state_dict")}
        return model, extra
    return model
