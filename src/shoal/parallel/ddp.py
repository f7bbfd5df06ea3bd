"""Data parallel: replicate the model, all-reduce gradients (DistributedDataParallel), through a compressor."""

from __future__ import annotations

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from shoal.compress import Compressor, install
from shoal.distributed import DistEnv


def apply(model: nn.Module, env: DistEnv, compressor: Compressor, bucket_mb: float = 0.0) -> nn.Module:
    """DDP around `model`; in a world of one with nothing to encode, the model itself: there is nothing to
    all-reduce, and DDP's bucket copies there cost ~10% of a step of the MNIST CNN (the update is the same)."""
    model = model.to(env.device)
    if env.world_size == 1 and not compressor.uses_hook:
        return model
    compressor.attach(model)
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    sizes = {"bucket_cap_mb": bucket_mb} if bucket_mb > 0 else {}  # 0: DDP's own sizes (a small first bucket starts early)
    ddp = DistributedDataParallel(model, device_ids=device_ids, process_group=compressor.group, **sizes)
    install(ddp, compressor)
    return ddp


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module, whatever wraps it."""
    return model.module if isinstance(model, DistributedDataParallel) else model
