"""Timing a step that several processes run together: the median over repetitions all ranks agree on."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist


def median_time(fn, seconds: float) -> float:
    """Median seconds of fn() over about `seconds` of repetitions (at least 3). Rank 0's first timing sets the count for
    all ranks (each deciding for itself would leave one waiting in a collective the others never call)."""
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    count = torch.tensor([max(3, min(200, int(seconds / max(time.perf_counter() - t0, 1e-6))))])
    dist.broadcast(count, 0)
    times = []
    for _ in range(int(count)):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]
