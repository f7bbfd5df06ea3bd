"""Sharded data parallel (ZeRO-3) with FSDP2 `fully_shard` over the (dp, fsdp) mesh.

Parameters, gradients and optimizer state are split over the fsdp ranks and replicated over
the dp ranks (HSDP; with fsdp = 1 that is plain replication, which composes with tensor
parallel where DDP does not). Each block is its own unit, so only one block is ever whole.
Gradients are reduce-scattered as averages over dp x fsdp, exactly like DDP's all-reduce.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from shoal.parallel.layers import blocks


def apply(model: nn.Module, dp_mesh: DeviceMesh, reshard_after_forward: bool = True) -> nn.Module:
    for name in blocks(model):
        fully_shard(model.get_submodule(name), mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    return model
