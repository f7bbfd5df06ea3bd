"""Gradient clipping by the true global norm, whatever the layout.

Each rank adds the squares of the gradient pieces it holds, each divided by how many ranks
hold an identical copy (replicated mesh dims, tensor-parallel peers of a plain tensor), and
one all-reduce over the world sums them: the norm of the unsplit model's gradient. Pipeline
ranks hold different layers, so they simply add up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from shoal.distributed.mesh import ParallelDims


def _copies(grad: torch.Tensor, dims: ParallelDims) -> int:
    """How many ranks hold this exact piece of the gradient."""
    per_stage = dims.world // dims.pp
    if not isinstance(grad, DTensor):
        return per_stage
    mesh = grad.device_mesh
    replicated = math.prod(mesh.size(i) for i, p in enumerate(grad.placements) if p.is_replicate())
    return replicated * per_stage // mesh.size()


def global_grad_norm(params: Iterable[torch.nn.Parameter], dims: ParallelDims) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    # summed where the gradients live: one device-to-host copy per step (in the caller's float()), not one per tensor
    total = torch.zeros((), dtype=torch.float64, device=grads[0].device if grads else "cpu")
    for grad in grads:
        local = grad.to_local() if isinstance(grad, DTensor) else grad
        total += local.detach().double().pow(2).sum() / _copies(grad, dims)
    if dist.is_initialized() and dims.world > 1:
        dist.all_reduce(total)
    return total.sqrt()


@torch.no_grad()
def clip_grad_norm_(params: Iterable[torch.nn.Parameter], max_norm: float, dims: ParallelDims) -> float:
    """Same rule as torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6))."""
    params = [p for p in params if p.grad is not None]
    norm = float(global_grad_norm(params, dims))
    coef = min(1.0, max_norm / (norm + 1e-6))
    if coef < 1.0:
        for p in params:
            p.grad.mul_(coef)
    return norm
