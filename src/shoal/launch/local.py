"""Spawn N workers on this machine through torch.distributed.elastic, the agent behind torchrun."""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from shoal.dist.env import free_port


class WorkerFailed(RuntimeError):
    """A worker died; the message carries its rank and the root cause."""


def launch_local(entry: Callable[..., Any], args: tuple, nproc: int, max_restarts: int = 0) -> dict[int, Any]:
    """Run entry(*args) in `nproc` processes with RANK/WORLD_SIZE/MASTER_* set; returns each rank's result."""
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"shoal-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        rdzv_configs={"timeout": 120},
        max_restarts=max_restarts,
        monitor_interval=0.1,
        start_method="spawn",
    )
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")  # pytorch#135712: stale addresses on restart
    try:
        return elastic_launch(config, entry)(*args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        raise WorkerFailed(f"worker rank {rank} failed: {_root_cause(failure)}") from None


def _root_cause(failure) -> str:
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", str(message))
    return str(message).strip().splitlines()[0] if message else f"exit code {failure.exitcode}"
