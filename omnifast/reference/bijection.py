"""Reference invertible mapping: the affine coupling stack and the affine pre-layer (spec 3.5).

Written the way the original computes it (per-point code copies concatenated with the encoded
coordinates into one ``[points, C + P]`` input), so that it is both the oracle for the fused
kernels and the baseline they are measured against.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from omnifast.reference.linear import linear

#: s of every coupling layer is clamped to [-S_CLAMP, S_CLAMP].
S_CLAMP = 8.0
LEAKY_SLOPE = 0.01
#: the affine pre-layer's homogeneous division adds this (a no-op in fp32).
AFFINE_EPS = 1e-8


class CouplingParams(NamedTuple):
    """Weights of the L coupling layers, stacked along a leading layer dimension.

    With E = 2 + 4 * n_freq encoded inputs, P the projection width, C the code width, H the
    hidden width of the scale/translation network and ``len(w_hidden)`` its extra hidden layers:

    Attributes:
        proj_w: [L, P, E]; proj_b: [L, P]
        w_in: [L, H, C + P] (code columns first, as in the original); b_in: [L, H]
        w_hidden: tuple of [L, H, H]; b_hidden: tuple of [L, H]
        w_out: [L, 2, H] (row 0 gives s, row 1 gives t); b_out: [L, 2]
    """

    proj_w: torch.Tensor
    proj_b: torch.Tensor
    w_in: torch.Tensor
    b_in: torch.Tensor
    w_hidden: tuple[torch.Tensor, ...]
    b_hidden: tuple[torch.Tensor, ...]
    w_out: torch.Tensor
    b_out: torch.Tensor

    @property
    def num_layers(self) -> int:
        return self.proj_w.shape[0]

    @property
    def code_dim(self) -> int:
        return self.w_in.shape[2] - self.proj_w.shape[1]


_PE_FREQUENCIES: dict[tuple, torch.Tensor] = {}


def _build_pe_frequencies(n_freq: int, device, dtype) -> torch.Tensor:
    # computed on the device (no host upload); float64 then one rounding: the same values
    return (math.pi * 2.0 ** torch.arange(n_freq, dtype=torch.float64, device=device)).to(dtype)


def pe_frequencies(n_freq: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """pi * 2^k for k = 0..n_freq-1, built once per (device, dtype) and cached. [n_freq]"""
    if torch.compiler.is_compiling():
        return _build_pe_frequencies(n_freq, device, dtype)
    key = (n_freq, torch.device(device if device is not None else "cpu"), dtype)
    w = _PE_FREQUENCIES.get(key)
    if w is None:
        with torch.inference_mode(False), torch.no_grad():
            w = _PE_FREQUENCIES[key] = _build_pe_frequencies(n_freq, key[1], dtype)
    return w


def positional_encoding(u: torch.Tensor, n_freq: int) -> torch.Tensor:
    """The coupling layers' fixed encoding of the two conditioning coordinates.

    Args:
        u: the two unmasked coordinates in increasing index order. [M, 2]
        n_freq: number of frequencies (pi * 2^k).

    Returns:
        ``[u_a, u_b, sin(w u_a), cos(w u_a), sin(w u_b), cos(w u_b)]``, coordinate-major with all
        sines before the cosines. [M, 2 + 4 * n_freq]
    """
    w = pe_frequencies(n_freq, u.device, u.dtype)
    parts = [u]
    for c in range(u.shape[-1]):
        arg = u[:, c : c + 1] * w
        parts += [torch.sin(arg), torch.cos(arg)]
    return torch.cat(parts, dim=-1)


def conditioning_coords(coord: int) -> tuple[int, int]:
    """The two coordinates that condition a layer transforming ``coord``, in increasing order."""
    a, b = (c for c in range(3) if c != coord)
    return a, b


def coupling_stack_ref(x: torch.Tensor, frame_idx: torch.Tensor, codes: torch.Tensor,
                       params: CouplingParams, coords: tuple[int, ...], n_freq: int,
                       inverse: bool = False) -> torch.Tensor:
    """Push points through the stack of single-coordinate affine coupling layers.

    Layer l transforms coordinate ``coords[l]`` with (s, t) = S_l([c_l, LeakyReLU(proj_l(PE))]):
    forward (local -> canonical) ``y = (y - t) * exp(-s)``, inverse ``y = y * exp(s) + t``, s
    clamped to [-8, 8]. Forward runs layers 0..L-1, inverse L-1..0.

    Args:
        x: points. [M, 3]
        frame_idx: which row of ``codes`` each point uses. [M] int64
        codes: per-frame, per-layer projected latent codes c_l. [F, L, C]
        params: the stacked layer weights.
        coords: the coordinate each layer transforms (0 = x, 1 = y, 2 = depth). length L
        n_freq: positional-encoding frequencies.
        inverse: run the inverse map.

    Returns:
        mapped points. [M, 3]
    """
    L = params.num_layers
    if len(coords) != L:
        raise ValueError(f"coords has {len(coords)} entries for {L} layers")
    cols = list(x.unbind(-1))
    order = range(L - 1, -1, -1) if inverse else range(L)
    for layer in order:
        s_idx = coords[layer]
        a, b = conditioning_coords(s_idx)
        u = torch.stack([cols[a], cols[b]], dim=-1)
        h = F.leaky_relu(linear(positional_encoding(u, n_freq), params.proj_w[layer],
                                params.proj_b[layer]), LEAKY_SLOPE)
        z = torch.cat([codes[frame_idx, layer], h], dim=-1)
        z = F.leaky_relu(linear(z, params.w_in[layer], params.b_in[layer]), LEAKY_SLOPE)
        for w, bias in zip(params.w_hidden, params.b_hidden):
            z = F.leaky_relu(linear(z, w[layer], bias[layer]), LEAKY_SLOPE)
        st = linear(z, params.w_out[layer], params.b_out[layer])
        s = torch.clamp(st[:, 0], -S_CLAMP, S_CLAMP)
        t = st[:, 1]
        if inverse:
            cols[s_idx] = cols[s_idx] * torch.exp(s) + t
        else:
            cols[s_idx] = (cols[s_idx] - t) * torch.exp(-s)
    return torch.stack(cols, dim=-1)


def affine_encoding(t: torch.Tensor, z: torch.Tensor, n_freq: int) -> torch.Tensor:
    """The affine pre-layer's input: interleaved sin/cos of depth, then time and depth.

    Args:
        t: time codes. [M]
        z: depths. [M]

    Returns:
        ``[sin(pi z), cos(pi z), sin(2 pi z), cos(2 pi z), ..., t, z]``. [M, 2 * n_freq + 2]
    """
    w = pe_frequencies(n_freq, z.device, z.dtype)
    arg = z[:, None] * w
    enc = torch.stack([torch.sin(arg), torch.cos(arg)], dim=-1).flatten(1)
    return torch.cat([enc, t[:, None], z[:, None]], dim=-1)


def affine_ref(x: torch.Tensor, t: torch.Tensor, weights: list[torch.Tensor],
               biases: list[torch.Tensor], n_freq: int, inverse: bool = False) -> torch.Tensor:
    """The depth- and time-conditioned 2-D affine pre-layer.

    An MLP (ReLU between layers) maps the encoding of (t, z) to theta = (phi, a1, tx, a2, ty);
    with s1 = e^a1, s2 = e^a2, forward is ``(x, y) <- [[s1 cos, -s1 sin], [s2 sin, s2 cos]]
    (x, y) + (tx, ty)`` divided by 1 + 1e-8; inverse applies the analytic inverse. z is kept.

    Args:
        x: points. [M, 3]
        t: time code of each point's frame. [M]
        weights, biases: the MLP's layers, ``[out, in]`` / ``[out]``, last one ``[5, hidden]``.

    Returns:
        mapped points. [M, 3]
    """
    h = affine_encoding(t, x[:, 2], n_freq)
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = linear(h, w, b)
        if i < len(weights) - 1:
            h = F.relu(h)
    phi, a1, tx, a2, ty = h.unbind(-1)
    c, s = torch.cos(phi), torch.sin(phi)
    s1, s2 = torch.exp(a1), torch.exp(a2)
    px, py, pz = x.unbind(-1)
    if inverse:
        dx, dy = (px - tx) / s1, (py - ty) / s2
        nx, ny = c * dx + s * dy, -s * dx + c * dy
    else:
        nx, ny = s1 * (c * px - s * py) + tx, s2 * (s * px + c * py) + ty
    return torch.stack([nx / (1.0 + AFFINE_EPS), ny / (1.0 + AFFINE_EPS), pz], dim=-1)
