"""Per-rank memory figures for metrics.jsonl.

`state_mb`: bytes this rank holds for parameters + gradients + optimizer state (local shards
only), the number FSDP divides by N; measured once, after the first step (when gradients and
optimizer state exist). `peak_rss_mb`: the process's peak resident memory (getrusage maxrss),
which also counts activations, buffers, and the Python/torch runtime. Train records carry the
largest over ranks and every rank's value (`*_per_rank`).
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor

from shoal.monitor.base import MONITORS, Monitor


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


@MONITORS.register("memory")
class Memory(Monitor):
    state: float | None = None

    def after_step(self, step: int) -> None:
        if self.state is None:  # parameters, gradients and optimizer state all exist now
            self.state = state_mb(self.ctx.layout.parameters(), self.ctx.optimizer)

    def record(self) -> dict:
        every = self.ctx.group.gather([self.state or 0.0, peak_rss_mb()])
        states, peaks = [round(float(r[0]), 3) for r in every], [round(float(r[1]), 1) for r in every]
        return {"state_mb": max(states), "peak_rss_mb": max(peaks), "state_mb_per_rank": states, "peak_rss_mb_per_rank": peaks}
