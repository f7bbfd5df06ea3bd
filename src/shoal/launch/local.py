"""Spawn workers through torch.distributed.elastic, the agent behind torchrun: on this machine, or as one node of many."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

from torch.distributed import DistError
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous.api import RendezvousError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from shoal.distributed.env import free_port
from shoal.launch import forkserver
from shoal.launch.nodes import NodeSpec, bind_gloo_to_route
from shoal.launch.restarts import describe, reporting_restarts


class WorkerFailed(RuntimeError):
    """A worker died; the message carries its rank and the root cause."""


class NodeLost(WorkerFailed):
    """This node's agent cannot reach the job's rendezvous any more (a long network cut): the others go on without it."""


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
        start_method=forkserver.method(),  # workers forked from a server that imported torch once
    )
    return _run(config, entry, args)


def launch_nodes(entry: Callable[..., Any], args: tuple, nproc: int, nodes: NodeSpec, max_restarts: int = 0,
                 run_id: str = "shoal") -> dict[int, Any]:
    """Run entry(*args) in `nproc` processes here as one node of a c10d rendezvous at nodes.endpoint.

    Returns the results of this node's ranks, keyed by global rank. Every node must pass the
    same run_id. After a failure every node restarts its workers (up to max_restarts) and they
    meet again; within MIN:MAX nodes the job goes on with whoever is left (elastic).
    """
    local_addr = bind_gloo_to_route(nodes.rdzv_host, nodes.rdzv_port)
    config = LaunchConfig(
        min_nodes=nodes.min_nodes,
        max_nodes=nodes.max_nodes,
        nproc_per_node=nproc,
        run_id=run_id,
        rdzv_backend="c10d",
        rdzv_endpoint=nodes.endpoint,
        # is_host: node rank 0 serves the store, which an address test cannot tell inside containers and namespaces;
        # last_call_timeout: how long a (re)started round waits for more nodes once MIN are there (default 30 s);
        # keep-alive 1 s x 3: a dead node is dropped from the next round after ~3 s instead of 15 s;
        # read_timeout 20 s (default 60): a node whose link came back finds a finished job's store gone in <= 20 s
        rdzv_configs={"timeout": 300, "is_host": nodes.is_host, "last_call_timeout": 2, "join_timeout": 300,
                      "keep_alive_interval": 1, "keep_alive_max_attempt": 3, "read_timeout": 20},
        max_restarts=max_restarts,
        monitor_interval=0.1,
        start_method=forkserver.method(),  # workers forked from a server that imported torch once
        local_addr=local_addr,
    )
    return _run(config, entry, args)


def _run(config: LaunchConfig, entry: Callable[..., Any], args: tuple) -> dict[int, Any]:
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")  # pytorch#135712: stale addresses on restart
    # as torchrun does: size OpenMP's pool before a worker starts, not after it built its data and model
    os.environ.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // config.nproc_per_node, 1)))
    quiet = [logging.getLogger(name) for name in _CHATTY]  # their warnings on a signal or a failure would be lines besides ours
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL)
    agent = None
    try:
        with reporting_restarts(across_nodes=config.max_nodes > 1) as agent:  # a restart: one line (rank, cause, restart k of n)
            forkserver.warm([entry.__module__, "torchmetrics"])  # a no-op when `shoal train` started it already
            return elastic_launch(config, forkserver.with_env)(dict(os.environ), entry, *args)
    except (RendezvousError, DistError) as err:  # the agent's own connection to the store (node rank 0) gave out
        if config.max_nodes == 1:
            raise
        raise NodeLost(f"this node ({socket.gethostname()}) lost the job: the rendezvous at {config.rdzv_endpoint} did not answer "
                       f"({_first_line(err)}); the other nodes go on without it if they can; run the same command again "
                       "to rejoin at the next rendezvous") from None
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        rank, cause = getattr(agent, "failed", None) or (rank, describe(failure))  # the agent's: a signal's victim first
        raise WorkerFailed(f"worker rank {rank} on {socket.gethostname()} failed: {cause}") from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)


_CHATTY = ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api", "torch.multiprocessing.spawn",
           "torch.distributed.elastic.rendezvous.dynamic_rendezvous")


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__
