"""Peak-memory measurement shared by the benchmark suites."""

import torch


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
