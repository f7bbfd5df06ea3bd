"""Data parallel: replicate the model, all-reduce gradients (DistributedDataParallel)."""

from __future__ import annotations

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from shoal.compress import register_hook
from shoal.config import CommConfig
from shoal.dist import DistEnv


def apply(model: nn.Module, env: DistEnv, comm: CommConfig) -> DistributedDataParallel:
    model = model.to(env.device)
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=device_ids)
    register_hook(ddp, comm)
    return ddp


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module, whatever wraps it."""
    return model.module if isinstance(model, DistributedDataParallel) else model
