"""Backend dispatch shared by every fused op (and, re-exported, the matmul-precision switch
of :mod:`omnifast.precision`).

Backends:

* ``"torch"``: :mod:`omnifast.reference`, pure PyTorch, any device, any float dtype.
* ``"cpu"``: the C++/OpenMP kernels in ``omnifast._C``, CPU tensors.
* ``"triton"``: the Triton kernels in ``omnifast.kernels``, CUDA tensors (or CPU tensors when
  ``TRITON_INTERPRET=1``, which is how the tests run them without a GPU).
* ``"cuda"``: the CUDA kernels in ``omnifast._C``, CUDA tensors, CUDA builds only.

The backend is chosen by ``with omnifast.backend(name):``, else ``OMNIFAST_BACKEND``, else
``"auto"``. Automatic choice takes the first backend that can run the op on the tensors' device,
dtype and sizes (CUDA tensors: cuda, triton, torch; CPU tensors: cpu, torch) and falls back
quietly; an implementation's ``auto`` hook may also pass it over by policy (the Triton MLP
kernels are taken in the tf32 and bf16 matmul modes only).
An explicit backend that cannot run raises :class:`BackendUnavailableError` saying why.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from omnifast._ext import extension_error, load_extension
from omnifast.kernels._env import triton_interpret
from omnifast.precision import PRECISIONS, get_matmul_precision, matmul_precision

__all__ = [
    "BACKENDS", "PRECISIONS", "BackendUnavailableError", "available_backends", "backend",
    "backend_unavailable_reason", "get_backend", "get_matmul_precision", "matmul_precision",
    "register", "registered_ops", "resolve", "triton_interpret",
]

BACKENDS = ("torch", "cpu", "triton", "cuda")

_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}

_backend_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "omnifast_backend", default=None
)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the requested op."""


def _check_name(name: str, allowed: tuple[str, ...], what: str) -> str:
    if not isinstance(name, str) or name.lower() not in allowed:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(allowed)}")
    return name.lower()


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Select the kernel backend inside a ``with`` block.

    Args:
        name: ``"auto"``, ``"torch"``, ``"cpu"``, ``"triton"`` or ``"cuda"``.
    """
    token = _backend_var.set(_check_name(name, ("auto",) + BACKENDS, "backend"))
    try:
        yield
    finally:
        _backend_var.reset(token)


def get_backend() -> str:
    """The requested backend: the innermost ``backend()`` block, else ``OMNIFAST_BACKEND``."""
    name = _backend_var.get()
    if name is None:
        name = _check_name(os.environ.get("OMNIFAST_BACKEND", "auto"), ("auto",) + BACKENDS,
                           "OMNIFAST_BACKEND value")
    return name


def _triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def backend_unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why backend ``name`` cannot run on ``device`` at all (``None`` when it can)."""
    device = torch.device(device)
    if name == "torch":
        return None
    if name == "cpu":
        if device.type != "cpu":
            return f"the 'cpu' backend runs on CPU tensors, got {device.type} tensors"
        if load_extension() is None:
            return extension_error()
        return None
    if name == "triton":
        if not _triton_installed():
            return "triton is not installed (pip install triton)"
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpret():
            return None
        return (f"Triton kernels run on CUDA tensors, got {device.type} tensors "
                "(set TRITON_INTERPRET=1 before importing triton to run them slowly on the CPU)")
    if name == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend runs on CUDA tensors, got {device.type} tensors"
        ext = load_extension()
        if ext is None:
            return extension_error()
        if not ext.has_cuda():
            return ("omnifast._C was built without CUDA sources (CPU build of torch or no nvcc); "
                    "rebuild on a machine with a CUDA build of torch and nvcc")
        return None
    raise ValueError(f"unknown backend {name!r}")


@dataclass(frozen=True)
class _Impl:
    fn: Callable
    supports: Callable[..., str | None] | None
    #: whether ``supports`` takes the op's shapes as a third argument
    wants_shapes: bool = False
    #: ``auto(device, dtype, shapes)``: a reason to pass this implementation over in automatic
    #: choice only (a policy, not an inability: an explicit request still runs it)
    auto: Callable[..., str | None] | None = None


def _takes_shapes(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


_REGISTRY: dict[str, dict[str, _Impl]] = {}


def register(op: str, backend_name: str, supports: Callable[..., str | None] | None = None,
             auto: Callable[..., str | None] | None = None):
    """Decorator registering ``fn`` as ``backend_name``'s implementation of ``op``.

    ``auto(device, dtype, shapes)``, if given, may return a reason for automatic dispatch to
    pass this implementation over although it can run (for example a precision in which
    another backend is the better default); it does not affect explicit requests nor
    :func:`available_backends`.

    ``supports(device, dtype)`` or ``supports(device, dtype, shapes)`` may return a reason
    string when this implementation cannot run on those tensors (an unsupported dtype, or sizes
    it has no kernel for); ``shapes`` is the dict of sizes the op passes to :func:`resolve`
    (empty when it passes none).
    """
    _check_name(backend_name, BACKENDS, "backend")

    def deco(fn: Callable) -> Callable:
        wants = supports is not None and _takes_shapes(supports)
        _REGISTRY.setdefault(op, {})[backend_name] = _Impl(fn, supports, wants, auto)
        return fn

    return deco


def _reason(op: str, name: str, device: torch.device, dtype: torch.dtype,
            shapes: dict | None = None) -> str | None:
    reason = backend_unavailable_reason(name, device)
    if reason is not None:
        return reason
    impl = _REGISTRY.get(op, {}).get(name)
    if impl is None:
        return f"the '{name}' backend has no implementation of {op}"
    if impl.supports is not None:
        if impl.wants_shapes:
            reason = impl.supports(device, dtype, dict(shapes or {}))
        else:
            reason = impl.supports(device, dtype)
    return reason


def resolve(op: str, device: torch.device, dtype: torch.dtype,
            shapes: dict | None = None) -> tuple[str, Callable]:
    """Pick the backend that runs ``op`` on tensors of this device and dtype (and sizes).

    ``shapes`` (op-specific sizes, e.g. the MLP widths) is passed to the implementations'
    ``supports`` hooks, so that a backend without a kernel for those sizes is skipped in auto
    mode and reported when requested explicitly.

    Returns:
        ``(backend name, implementation)``.

    Raises:
        BackendUnavailableError: an explicitly requested backend cannot run it.
    """
    device = torch.device(device)
    requested = get_backend()
    if requested != "auto":
        reason = _reason(op, requested, device, dtype, shapes)
        if reason is not None:
            raise BackendUnavailableError(
                f"omnifast backend '{requested}' cannot run {op} on {device.type} {dtype}: "
                f"{reason}. Use `omnifast.backend('auto')` (or unset OMNIFAST_BACKEND) to fall "
                "back to the best available backend."
            )
        return requested, _REGISTRY[op][requested].fn
    for name in _AUTO_ORDER.get(device.type, ("torch",)):
        if _reason(op, name, device, dtype, shapes) is None:
            impl = _REGISTRY[op][name]
            if impl.auto is not None and impl.auto(device, dtype, dict(shapes or {})):
                continue
            return name, impl.fn
    raise BackendUnavailableError(f"no backend can run {op} on {device.type} {dtype}")


def available_backends(op: str, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32,
                       shapes: dict | None = None) -> dict[str, str | None]:
    """For each backend, ``None`` if it can run ``op`` here, else the reason it cannot."""
    device = torch.device(device)
    return {name: _reason(op, name, device, dtype, shapes) for name in BACKENDS}


def registered_ops() -> list[str]:
    return sorted(_REGISTRY)
