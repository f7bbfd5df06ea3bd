"""Per-rank memory figures for metrics.jsonl.

`state_mb`: bytes this rank holds for parameters + gradients + optimizer state (local shards
only), the number FSDP divides by N. `peak_rss_mb`: the process's peak resident memory
(getrusage maxrss), which also counts activations, buffers, and the Python/torch runtime.
Train records carry the largest over ranks and every rank's value (`*_per_rank`).
"""

from __future__ import annotations

import resource
import sys
from typing import Iterable

import torch
from torch.distributed.tensor import DTensor


def _local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if isinstance(t, DTensor) else t
    return t.numel() * t.element_size()


def state_mb(params: Iterable[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> float:
    params = list(params)
    total = sum(_local_bytes(p) for p in params)
    total += sum(_local_bytes(p.grad) for p in params if p.grad is not None)
    for state in optimizer.state.values():
        total += sum(_local_bytes(v) for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    return total / 2**20


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def memory_record(state: float | None, world: int) -> dict:
    """Every rank's figures (a collective): the largest, and the per-rank lists, for metrics.jsonl."""
    mine = torch.tensor([state or 0.0, peak_rss_mb()], dtype=torch.float64)
    every = [mine]
    if world > 1:
        every = [torch.zeros_like(mine) for _ in range(world)]
        torch.distributed.all_gather(every, mine)
    states, peaks = [round(float(t[0]), 3) for t in every], [round(float(t[1]), 1) for t in every]
    return {"state_mb": max(states), "peak_rss_mb": max(peaks), "state_mb_per_rank": states, "peak_rss_mb_per_rank": peaks}
