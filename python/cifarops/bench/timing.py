"""Medians after warm-up: CUDA events through triton.testing.do_bench on a GPU, torch.utils.benchmark on
the CPU."""

from __future__ import annotations

from typing import Callable

import torch


def median_ms(fn: Callable[[], object], device: torch.device, min_run_time: float = 0.5) -> tuple[float, float]:
    """(median, interquartile range) of one call of `fn`, in milliseconds, after warm-up."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        try:
            import triton.testing

            times = triton.testing.do_bench(fn, warmup=25, rep=max(100, int(min_run_time * 1000)), return_mode="all")
            times = torch.tensor(times)
        except ImportError:
            times = torch.tensor(_cuda_event_times(fn, device, repeats=100))
        q = torch.quantile(times, torch.tensor([0.25, 0.5, 0.75]))
        return q[1].item(), (q[2] - q[0]).item()
    import torch.utils.benchmark as benchmark

    measurement = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time
    )
    return measurement.median * 1e3, measurement.iqr * 1e3


def _cuda_event_times(fn, device, repeats):
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end))
    return times


def copy_bandwidth_gbs(numel: int, dtype: torch.dtype, device: torch.device) -> float:
    """Device-to-device copy bandwidth (bytes read plus written), the ceiling of memory-bound ops."""
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    ms, _ = median_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9
