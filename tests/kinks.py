"""Parity for ops with piecewise-linear activations (leaky ReLU, ReLU, clamp), on any CPU.

Why a rule of its own: two correct fp32 implementations round differently (the fused kernels,
and the reference's matrix products, whose code paths differ between CPUs and math-library
instruction sets). A pre-activation a few ulps from a kink can land on different sides of it;
the slope there jumps (1 -> 0.01 for leaky ReLU), so that point's gradients, and everything after
it in the stack, differ by far more than any rounding tolerance, and neither path is wrong. Deep
stacks with a positional encoding also amplify rounding: a few points' gradients carry errors of
1e-3 relative in *every* fp32 implementation, so an elementwise fp32-vs-fp32 tolerance is a
property of the machine, not of the kernel.

The rule (:func:`assert_parity`):

1. **Kink points are left out, and counted.** The reference runs in fp32 and in fp64 under a
   ``TorchFunctionMode`` that sees every ``linear`` and every kink op. For each unit it records
   the pre-activation ``a`` and its rounding scale ``|x| @ |W|^T + |b|`` (the magnitude of the
   terms summed), and for each point and layer the fp32 reference's own error level
   ``r = max_units |a32 - a64| / (eps * scale)``, which grows with depth as earlier layers' errors
   are amplified. A point is *near a kink* when in some unit
   ``|a64 - kink| <= KINK_MARGIN * max(r, 2) * eps * scale``. Those points' rows are not compared
   and their upstream gradient is zero, so they add exactly nothing to the shared gradients
   (weights, codes) of either path. At most ``MAX_EXCLUDED`` of the points may be left out.
2. **Errors are measured against fp64**, not against the fp32 reference. The yardstick is the
   larger of two fp32-sized errors: the fp32 reference's, and how far the fp64 reference moves
   when every input and weight is perturbed by one fp32 rounding (``1 + eps u``), which measures
   the problem's conditioning (the fp32 reference can be lucky on the one ill-conditioned point
   that dominates a norm). For the output and every gradient: the op's norm-wise relative error
   is at most ``NORM_FACTOR`` times the yardstick's (floored at ``NORM_FLOOR``), and elementwise
   ``|op - ref64| <= rtol |ref64| + atol + ELEMENT_FACTOR max(err, rms)`` holds for all but
   ``MAX_OUTLIERS`` of the elements, with ``err`` the yardstick's error at the element and
   ``rms`` its root-mean-square over the tensor (two correct summation orders of an
   ill-conditioned gradient differ by several times either one's error at single elements).

A wrong kernel fails: one unit's slope changed moves the norm-wise error by orders of magnitude
(``test_kink_rule_*`` in the op tests prove it), and a flip at a kink passes whichever side each
path takes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

#: margin, in units of the fp32 reference's own error level, inside which a kink may flip.
KINK_MARGIN = 8.0
#: a parity check fails if more than this fraction of points is near a kink.
MAX_EXCLUDED = 0.1
#: the op's norm-wise error may be this many times the fp32 reference's ...
NORM_FACTOR = 8.0
#: ... or this, whichever is larger.
NORM_FLOOR = 32 * torch.finfo(torch.float32).eps
#: elementwise, the op may be off by this many times the fp32 reference's own error ...
ELEMENT_FACTOR = 8.0
#: ... beyond the tolerances, in at most this fraction of the elements.
MAX_OUTLIERS = 0.005

EPS_FP32 = torch.finfo(torch.float32).eps


def _linear_scale(args, kwargs) -> torch.Tensor:
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    scale = F.linear(x.abs(), w.abs())
    return scale if b is None else scale + b.abs()


class _KinkRecorder(TorchFunctionMode):
    """Records (pre-activation, kinks, scale) for every kink op applied to a linear's output."""

    def __init__(self):
        super().__init__()
        self.scales: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.records: list[tuple[torch.Tensor, tuple[float, ...], torch.Tensor]] = []

    def _scale_of(self, t: torch.Tensor) -> torch.Tensor:
        for key in (id(t), id(t._base) if t._base is not None else None):
            if key in self.scales:
                base, scale = self.scales[key]
                if base is t:
                    return scale
                return scale.as_strided(t.size(), t.stride(), t.storage_offset())
        raise AssertionError(
            "a kink op's input is not a linear layer's output: the kink rule cannot bound its "
            "rounding (run the probe at the default fp32 matmul precision)")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        with torch.no_grad():
            if func is F.linear or func is torch._C._nn.linear:
                self.scales[id(out)] = (out, _linear_scale(args, kwargs))
            elif func in (F.leaky_relu, F.relu, torch.relu):
                self.records.append((args[0].detach(), (0.0,), self._scale_of(args[0])))
            elif func is torch.clamp:
                lo = args[1] if len(args) > 1 else kwargs.get("min")
                hi = args[2] if len(args) > 2 else kwargs.get("max")
                kinks = tuple(float(v) for v in (lo, hi) if v is not None)
                self.records.append((args[0].detach(), kinks, self._scale_of(args[0])))
        return out


def _record(reference: Callable[..., torch.Tensor], args: tuple):
    recorder = _KinkRecorder()
    with torch.no_grad(), recorder:
        reference(*args)
    assert recorder.records, "the reference applied no piecewise-linear activation"
    return recorder.records


def to_float64(obj, memo: dict[int, torch.Tensor] | None = None,
               perturb: torch.Generator | None = None):
    """A float64 copy of ``obj`` (tensors, lists, tuples, NamedTuples of them; other values as
    they are). Floating tensors that require grad become fp64 leaves that require grad; ``memo``
    (id of the original -> copy) lets the caller find them. With ``perturb``, every floating
    value is also multiplied by ``1 + eps_fp32 * u``, ``u`` uniform in [-1, 1]: the data as one
    fp32 rounding might have left it."""
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        if not obj.is_floating_point():
            return obj
        if id(obj) not in memo:
            copy = obj.detach().double()
            if perturb is not None:
                noise = torch.rand(copy.shape, generator=perturb, dtype=torch.float64) * 2 - 1
                copy = copy * (1 + EPS_FP32 * noise)
            memo[id(obj)] = copy.requires_grad_(obj.requires_grad)
        return memo[id(obj)]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_float64(v, memo, perturb) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_float64(v, memo, perturb) for v in obj)
    return obj


def near_kink_points(reference: Callable[..., torch.Tensor], args: tuple,
                     num_points: int) -> torch.Tensor:
    """Which points have a unit within the rounding margin of a kink (rule 1 above).

    Args:
        reference: the reference op, called as ``reference(*args)`` in fp32 and with an fp64
            copy of ``args``.
        args: the op's arguments.
        num_points: M, the leading dimension of the per-point pre-activations. Kinks of
            tensors not indexed by point (a per-frame code network) cannot be left out point by
            point: the op under test must compute those exactly as the reference does.

    Returns:
        [M] bool. Raises if the reference applied no kink op (nothing was probed).
    """
    rec32 = _record(reference, args)
    rec64 = _record(reference, to_float64(args))
    near = torch.zeros(num_points, dtype=torch.bool)
    for (pre32, kinks, _), (pre64, _, scale) in zip(rec32, rec64, strict=True):
        if pre64.shape[:1] != (num_points,):
            continue  # not per point (a per-frame network): run alike by both paths
        unit_error = (pre32.double() - pre64).abs() / (EPS_FP32 * scale).clamp_min(1e-300)
        level = unit_error.reshape(num_points, -1).amax(dim=1).clamp_min(2.0)
        margin = KINK_MARGIN * EPS_FP32 * scale * level.reshape(-1, *[1] * (pre64.dim() - 1))
        for kink in kinks:
            near |= ((pre64 - kink).abs() <= margin).reshape(num_points, -1).any(dim=1)
    return near


def _norm_error(a: torch.Tensor, truth: torch.Tensor) -> float:
    return ((a.double() - truth).norm() / truth.norm().clamp_min(1e-300)).item()


def assert_accurate(actual: torch.Tensor, ref32: torch.Tensor, ref64: torch.Tensor,
                    perturbed64: torch.Tensor, *, rtol: float, atol: float, name: str) -> None:
    """Rule 2 above: ``actual`` is as close to the fp64 truth ``ref64`` as the fp32 reference
    ``ref32`` is, or as the data's own fp32 rounding moves it (``perturbed64``)."""
    assert actual.shape == ref64.shape, f"{name}: shape {tuple(actual.shape)} != " \
                                        f"{tuple(ref64.shape)}"
    if ref64.numel() == 0:
        return
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    ours = _norm_error(actual, ref64)
    theirs = max(_norm_error(ref32, ref64), _norm_error(perturbed64, ref64))
    assert ours <= NORM_FACTOR * max(theirs, NORM_FLOOR), (
        f"{name}: norm-wise error {ours:.3g} against fp64, the fp32 reference's (or rounding "
        f"the data's) {theirs:.3g}")
    a, e = actual.detach().double(), ref64.detach()
    r = ref32.detach().double()
    ref_error = torch.maximum((r - e).abs(), (perturbed64.detach() - e).abs())
    bound = rtol * e.abs() + atol + ELEMENT_FACTOR * ref_error.clamp_min(ref_error.square()
                                                                         .mean().sqrt())
    diff = (a - e).abs()
    bad = diff > bound
    allowed = int(MAX_OUTLIERS * e.numel())
    if int(bad.sum()) > allowed:
        worst = int((diff - bound).flatten().argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), e.shape))
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {e.numel()} elements (at most {allowed} allowed) are "
            f"off the fp64 reference beyond rtol={rtol}, atol={atol:.3g} and {ELEMENT_FACTOR}x "
            f"the fp32 reference's error; worst at {idx}: got {a[idx].item():.8g}, fp64 "
            f"{e[idx].item():.8g}, fp32 reference {r[idx].item():.8g}")


def assert_parity(op: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor],
                  args: tuple, leaves: list[torch.Tensor], names: list[str], *,
                  num_points: int, rtol: float = 1e-5, atol: float = 2e-5,
                  grad_rtol: float = 1e-4, grad_rel_atol: float = 2e-5, seed: int = 7,
                  kinks: bool = True, what: str = "") -> torch.Tensor:
    """An op against its reference, values and gradients, away from kinks (rules 1 and 2).

    Args:
        op, reference: called as ``f(*args)``; each returns ``[M, ...]`` with autograd.
        args: their arguments; ``leaves`` (among or inside them) are differentiated, labelled by
            ``names``.
        num_points: M.
        rtol, atol: value tolerances; grad_rtol, grad_rel_atol (times the gradient's largest
            fp64 magnitude) for the gradients.
        seed: of the random upstream gradient.
        kinks: False for an op without piecewise-linear activations (rule 2 only).

    Returns:
        the [M] bool mask of the points left out.
    """
    near = (near_kink_points(reference, args, num_points) if kinks
            else torch.zeros(num_points, dtype=torch.bool))
    assert int(near.sum()) <= MAX_EXCLUDED * max(num_points, 1), (
        f"{what}: {int(near.sum())} of {num_points} points are near a kink; the check would "
        f"compare too little")
    keep = ~near
    memo: dict[int, torch.Tensor] = {}
    memo_p: dict[int, torch.Tensor] = {}
    args64 = to_float64(args, memo)
    args64p = to_float64(args, memo_p, perturb=torch.Generator().manual_seed(seed + 1))
    y, y32, y64, y64p = op(*args), reference(*args), reference(*args64), reference(*args64p)
    assert_accurate(y[keep], y32[keep], y64[keep], y64p[keep], rtol=rtol, atol=atol,
                    name=f"{what} y")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    dy = dy * keep.reshape(-1, *[1] * (dy.dim() - 1))
    grads = torch.autograd.grad(y, leaves, dy.to(y.dtype), allow_unused=True)
    grads32 = torch.autograd.grad(y32, leaves, dy.to(y32.dtype), allow_unused=True)
    grads64 = torch.autograd.grad(y64, [memo[id(t)] for t in leaves], dy, allow_unused=True)
    grads64p = torch.autograd.grad(y64p, [memo_p[id(t)] for t in leaves], dy, allow_unused=True)
    for name, leaf, *four in zip(names, leaves, grads, grads32, grads64, grads64p, strict=True):
        a, r, e, p = (g if g is not None else torch.zeros_like(leaf, dtype=torch.float64)
                      for g in four)
        scale = e.abs().max().item() if e.numel() else 0.0
        assert_accurate(a, r, e, p, rtol=grad_rtol, atol=grad_rel_atol * scale + 1e-12,
                        name=f"{what} d{name}")
    return near


class EditedKink(TorchFunctionMode):
    """Replaces the output of the ``call``-th kink op (leaky ReLU, ReLU, clamp; counted from 0)
    by ``edit(pre_activation, output)``: a deliberately different kernel, to test the rule."""

    def __init__(self, call: int, edit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.call, self.edit, self.seen = call, edit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (F.leaky_relu, F.relu, torch.relu, torch.clamp):
            if self.seen == self.call:
                out = self.edit(args[0], out)
            self.seen += 1
        return out


def with_edited_kink(reference: Callable[..., torch.Tensor], call: int,
                     edit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """``reference`` with one kink op's output edited (see :class:`EditedKink`)."""

    def op(*args):
        with EditedKink(call, edit):
            return reference(*args)

    return op


def kink_pre_activations(reference: Callable[..., torch.Tensor], args: tuple) -> list:
    """The fp64 inputs of the reference's kink ops, in call order. Each [M, ...]"""
    return [pre for pre, _, _ in _record(reference, to_float64(args))]
