"""Process-wide tuning a worker wants and a library caller may not: thread count and the C allocator."""

from __future__ import annotations

import os

import torch

from shoal.config import JobConfig
from shoal.train.malloc import keep_freed_memory


def tune_process(cfg: JobConfig) -> None:
    """Share the cores between the processes on this machine instead of oversubscribing them, and stop
    the C allocator from handing each step's memory back to the OS (train.keep_freed_memory)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = cfg.train.threads or max((os.cpu_count() or 1) // local_world, 1)
    torch.set_num_threads(threads)
    if cfg.train.keep_freed_memory:
        keep_freed_memory()
