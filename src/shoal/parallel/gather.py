"""The whole model as one plain state_dict on rank 0, whatever the layout (what model.pt holds)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from shoal.dist.mesh import ParallelDims


def full_state_dict(modules: list[nn.Module], dims: ParallelDims, rank: int, key_order: list[str]) -> dict | None:
    """Collective over the world: DTensors are gathered whole, pipeline stages are sent to rank 0."""
    part = {}
    for module in modules:
        for key, value in module.state_dict().items():
            value = value.full_tensor() if isinstance(value, DTensor) else value
            part[key] = value.detach().cpu().clone()
    c = dims.coords(rank)
    owner = c["dp"] == c["fsdp"] == c["tp"] == 0  # one copy of each stage
    if dims.pp > 1:
        parts = [None] * dims.world if rank == 0 else None
        dist.gather_object(part if owner else {}, parts, dst=0)
        if rank != 0:
            return None
        part = {k: v for p in parts for k, v in p.items()}
    if rank != 0:
        return None
    return {k: part[k] for k in key_order if k in part}
