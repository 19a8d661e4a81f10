"""What the benchmarks measure utilization against: the machine's float32 GEMM peak, measured in the same run
(and the same thread count) as the numbers it divides."""

from __future__ import annotations

import time

import numpy as np
import torch


def median_time(fn, repeats: int, setup=None, sync=None) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (``setup()`` untimed before each; ``sync()`` after,
    e.g. ``torch.cuda.synchronize``)."""
    times = []
    for _ in range(repeats):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def gemm_peak(device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an ``n``×``n`` float32 matmul on ``device`` with torch's current thread count (median)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    torch.mm(a, b)
    return 2 * n**3 / median_time(lambda: torch.mm(a, b), repeats, sync=sync)
