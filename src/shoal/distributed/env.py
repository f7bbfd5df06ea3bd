"""Join the process group the launcher (shoal or torchrun) set up, or a world of one when run alone."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_elastic() -> bool:
    """True inside a worker started by torchrun or shoal's launcher (both use torch.distributed.elastic)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def pick_backend(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: str = "auto", timeout_s: float = 300.0) -> DistEnv:
    """Initialise (or reuse) the default process group.

    Outside a launcher this makes a world of one on an in-memory store, so the same code path
    (and the same numerics) runs for 1 and N processes.
    """
    backend = pick_backend(backend)
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        if launched_by_elastic():
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistEnv(rank, world, local_rank, device, dist.get_backend())


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def finish_together() -> None:
    """Destroy the process group once every rank is done with it, for workers that measure and exit: a rank tearing
    its gloo pairs down while a peer still uses them has aborted the peer ("terminate called without an active
    exception", seen once in `shoal calibrate`)."""
    dist.barrier()
    shutdown()
