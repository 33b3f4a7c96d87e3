"""Backend dispatch and the matmul-precision switch."""

import pytest
import torch

import omnifast
from omnifast import dispatch
from omnifast._ext import load_extension
from omnifast.reference.linear import linear


def test_auto_falls_back_to_an_available_backend():
    name, _ = dispatch.resolve("composite", torch.device("cpu"), torch.float32)
    assert name == ("cpu" if load_extension() is not None else "torch")
    with omnifast.backend("torch"):
        name, fn = dispatch.resolve("composite", torch.device("cpu"), torch.float32)
    assert name == "torch"


def test_explicit_unavailable_backend_says_why():
    with omnifast.backend("cuda"):
        with pytest.raises(omnifast.BackendUnavailableError, match="CUDA tensors"):
            omnifast.ops.composite(torch.rand(2, 3), torch.rand(2, 3, 1))


def test_unregistered_op_backend_is_reported():
    dispatch.register("_only_torch_op", "torch")(lambda: "ok")
    with omnifast.backend("cpu"):
        with pytest.raises(omnifast.BackendUnavailableError,
                           match="no implementation|not importable"):
            dispatch.resolve("_only_torch_op", torch.device("cpu"), torch.float32)
    assert dispatch.resolve("_only_torch_op", torch.device("cpu"), torch.float32)[0] == "torch"


def test_supports_hook_rejects_dtype_and_auto_skips_it():
    dispatch.register("_dtype_op", "torch")(lambda: "torch")
    dispatch.register("_dtype_op", "cpu", supports=lambda dev, dt: None if dt == torch.float32
                      else f"dtype {dt} unsupported")(lambda: "cpu")
    cpu_ok = dispatch.backend_unavailable_reason("cpu", torch.device("cpu")) is None
    name, _ = dispatch.resolve("_dtype_op", torch.device("cpu"), torch.float64)
    assert name == "torch"
    if cpu_ok:
        assert dispatch.resolve("_dtype_op", torch.device("cpu"), torch.float32)[0] == "cpu"
        with omnifast.backend("cpu"), pytest.raises(omnifast.BackendUnavailableError,
                                                    match="unsupported"):
            dispatch.resolve("_dtype_op", torch.device("cpu"), torch.float64)


def test_environment_variable_and_nesting(monkeypatch):
    monkeypatch.setenv("OMNIFAST_BACKEND", "torch")
    assert omnifast.get_backend() == "torch"
    with omnifast.backend("cpu"):
        assert omnifast.get_backend() == "cpu"
        with omnifast.backend("auto"):
            assert omnifast.get_backend() == "auto"
        assert omnifast.get_backend() == "cpu"
    monkeypatch.setenv("OMNIFAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="OMNIFAST_BACKEND"):
        omnifast.get_backend()
    with pytest.raises(ValueError, match="unknown backend"):
        with omnifast.backend("metal"):
            pass


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = dispatch.backend_unavailable_reason("triton", torch.device("cpu"))
    assert reason is not None and ("TRITON_INTERPRET" in reason or "not installed" in reason)


def test_available_backends_reports_reasons():
    info = omnifast.available_backends("composite")
    assert info["torch"] is None
    assert isinstance(info["cuda"], str) and info["cuda"]


def test_matmul_precision_switch(monkeypatch):
    assert omnifast.get_matmul_precision() == "fp32"
    x, w, b = torch.randn(64, 32), torch.randn(16, 32), torch.randn(16)
    exact = x.double() @ w.double().t() + b.double()
    fp32 = linear(x, w, b)
    with omnifast.matmul_precision("bf16"):
        assert omnifast.get_matmul_precision() == "bf16"
        bf16 = linear(x, w, b)
    with omnifast.matmul_precision("tf32"):
        tf32 = linear(x, w, b)  # plain fp32 on the CPU
    err32 = (fp32.double() - exact).abs().max()
    err16 = (bf16.double() - exact).abs().max()
    assert err32 < 1e-4 and err16 > 10 * err32 and err16 < 0.5
    # bf16 operands, fp32 accumulation, product rounded once to bf16 (relative 2^-8)
    operands16 = x.bfloat16().double() @ w.bfloat16().double().t()
    product = bf16.double() - b.double()
    assert ((product - operands16).abs() <= 2**-8 * operands16.abs() + 1e-5).all()
    assert torch.equal(tf32, fp32)
    monkeypatch.setenv("OMNIFAST_MATMUL_PRECISION", "bf16")
    assert omnifast.get_matmul_precision() == "bf16"
    with pytest.raises(ValueError, match="matmul precision"):
        with omnifast.matmul_precision("fp8"):
            pass


def test_supports_hook_sees_the_shapes():
    """A ``supports`` hook with a third argument gets the sizes the op passes to resolve: auto
    dispatch passes over sizes it has no kernel for, an explicit request says why."""
    seen = []

    def supports(dev, dt, shapes):
        seen.append(shapes)
        return None if shapes.get("H", 0) % 16 == 0 else f"H={shapes.get('H')} unsupported"

    dispatch.register("_shaped_op", "torch")(lambda: "torch")
    dispatch.register("_shaped_op", "cpu", supports=supports)(lambda: "cpu")
    cpu = torch.device("cpu")
    if dispatch.backend_unavailable_reason("cpu", cpu) is not None:
        pytest.skip("omnifast._C is not built")
    assert dispatch.resolve("_shaped_op", cpu, torch.float32, {"H": 40})[0] == "torch"
    assert dispatch.resolve("_shaped_op", cpu, torch.float32, {"H": 64})[0] == "cpu"
    assert seen == [{"H": 40}, {"H": 64}]
    assert "H=40" in dispatch.available_backends("_shaped_op", cpu, torch.float32,
                                                 {"H": 40})["cpu"]
    with omnifast.backend("cpu"), pytest.raises(omnifast.BackendUnavailableError, match="H=40"):
        dispatch.resolve("_shaped_op", cpu, torch.float32, {"H": 40})


def _global_names(code) -> set[str]:
    """The global and attribute names a function's code (nested functions included) uses."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _global_names(const)
    return names


def test_fused_implementations_never_fall_back_to_the_reference():
    """What a backend cannot run is decided by its ``supports`` hook, before it is chosen: no
    fused implementation calls the reference or the dispatch itself. The Triton MLP ops' hooks
    take the widths (``tests/test_triton_mlp.py`` runs them)."""
    import omnifast.ops  # noqa: F401 (registers every op)
    import omnifast.reference as reference

    forbidden = {n for n in dir(reference) if n.endswith("_ref")} | {"resolve"}
    checked = 0
    for op in ("composite", "composite_argmax", "occlusion_score", "coupling_stack", "affine",
               "gabor_net"):
        for name, impl in dispatch._REGISTRY[op].items():
            if name == "torch":
                continue
            used = _global_names(impl.fn.__code__) & forbidden
            assert not used, f"{op}'s {name} implementation calls {sorted(used)}"
            checked += 1
        triton = dispatch._REGISTRY[op].get("triton")
        if op in ("coupling_stack", "affine", "gabor_net"):
            assert triton is not None and triton.wants_shapes, op
    assert checked >= 12
    # the check can fail: a fallback inside an implementation is seen
    def falls_back(x, *args):
        return reference.coupling_stack_ref(x, *args)

    assert "coupling_stack_ref" in _global_names(falls_back.__code__)
