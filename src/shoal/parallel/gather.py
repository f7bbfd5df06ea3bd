"""The whole model as one plain state_dict on rank 0, whatever the layout (what model.pt holds)."""

from __future__ import annotations

import contextlib
import logging

import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from shoal.distributed.mesh import ParallelDims


@contextlib.contextmanager
def _quiet_redistribute():
    """DTensor logs that gathering a parameter sharded over fsdp and tp takes two all-gathers "and may give
    inconsistent results ... due to different reduction orders": an all-gather reduces nothing, so the whole
    tensor is exact; only that logger is quieted, only while gathering."""
    log = logging.getLogger("torch.distributed.tensor._redistribute")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def full_state_dict(modules: list[nn.Module], dims: ParallelDims, rank: int, key_order: list[str]) -> dict | None:
    """Collective over the world: DTensors are gathered whole, pipeline stages are sent to rank 0.

    Only the rank that keeps a stage holds its whole tensors (one at a time elsewhere), so a
    model too big for one process is never whole on every rank at once.
    """
    c = dims.coords(rank)
    owner = c["dp"] == c["fsdp"] == c["tp"] == 0  # one copy of each stage
    part = {}
    with _quiet_redistribute():
        for module in modules:
            for key, value in module.state_dict().items():
                value = value.full_tensor() if isinstance(value, DTensor) else value  # every peer must take part
                if owner:
                    part[key] = value.detach().cpu().clone()
    if dims.pp > 1:
        parts = [None] * dims.world if rank == 0 else None
        dist.gather_object(part if owner else {}, parts, dst=0)
        if rank != 0:
            return None
        part = {k: v for p in parts for k, v in p.items()}
    if rank != 0:
        return None
    return {k: part[k] for k in key_order if k in part}
