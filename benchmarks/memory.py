"""Peak-memory measurement shared by the benchmark suites."""

import torch


def _returned_bytes(result) -> int:
    """Bytes of the distinct storages of the tensors in ``result`` (nested tuples/lists)."""
    seen, total, stack = set(), 0, [result]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            if storage.data_ptr() not in seen and storage.nbytes() > 0:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(x, (tuple, list)):
            stack.extend(x)
    return total


def peak_and_workspace_bytes(fn, device: str) -> tuple[int, int]:
    """``(peak, workspace)`` of one call of ``fn()``.

    ``peak``: peak bytes allocated while ``fn()`` runs, beyond what was live before (what
    :func:`peak_extra_bytes` returns; it counts the call's own outputs).
    ``workspace``: that peak minus the bytes of the tensors ``fn()`` returns (outputs,
    gradients), i.e. the temporary memory of the call, including anything it keeps alive
    without returning it (such as tensors an autograd graph saves for the backward).
    """
    box = {}

    def call():
        box["result"] = fn()

    peak = peak_extra_bytes(call, device)
    returned = _returned_bytes(box.pop("result"))
    return peak, max(0, peak - returned)


def peak_extra_bytes(fn, device: str) -> int:
    """Peak bytes allocated while ``fn()`` runs, beyond what was live before.

    CUDA: the caching allocator's peak statistics. CPU: the running sum of the allocation and
    free events the profiler records for ATen allocations, in time order.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    cur = peak = 0
    for _, b in events:
        cur += b
        peak = max(peak, cur)
    return peak
