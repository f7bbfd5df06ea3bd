"""DDP communication hooks chosen by name in the job file.

fp16 and PowerSGD come from torch. torch's own bf16 hook refuses to run unless the backend
is NCCL (it checks the hook's *function name*), although gloo reduces bf16 correctly, so bf16
is ours, under a name DDP does not check.
"""


import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel

from shoal.config import CommConfig


def bfloat16_allreduce_hook(process_group: dist.ProcessGroup | None, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """All-reduce the bucket in bfloat16 (half the bytes of fp32), average, and cast back."""
    group = process_group if process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    grads = bucket.buffer()
    compressed = grads.to(torch.bfloat16).div_(world)
    future = dist.all_reduce(compressed, group=group, async_op=True).get_future()

    def decompress(fut: torch.futures.Future) -> torch.Tensor:
        grads.copy_(fut.value()[0])
        return grads

    return future.then(decompress)


def register_hook(ddp: DistributedDataParallel, cfg: CommConfig) -> "object | None":
    """Install the configured hook; returns its state (PowerSGD keeps error feedback there)."""
    if cfg.hook == "none":
        return None
    if cfg.hook == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return None
    if cfg.hook == "bf16":
        ddp.register_comm_hook(None, bfloat16_allreduce_hook)
        return None
    state = powerSGD_hook.PowerSGDState(
        process_group=None,
        matrix_approximation_rank=cfg.powersgd_rank,
        start_powerSGD_iter=max(cfg.powersgd_warmup, 2),  # torch requires > 1 with error feedback
    )
    ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    return state
