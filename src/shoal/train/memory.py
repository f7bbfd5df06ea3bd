"""Per-rank memory figures for metrics.jsonl.

`state_mb`: bytes this rank holds for parameters + gradients + optimizer state (local shards
only), the number FSDP divides by N. `peak_rss_mb`: the process's peak resident memory
(getrusage maxrss), which also counts activations, buffers, and the Python/torch runtime.
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
