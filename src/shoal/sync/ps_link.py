"""Links that survive a worker's death (ps.rejoin): one two-member gloo process group per (server, worker, incarnation).

The job's process groups have a fixed membership: a worker that dies breaks every collective and
receive that involves it, and a restarted one cannot join them again. So with `ps.rejoin` each
worker's training process talks to each server over a link of its own, made from the job's TCP
store (no collective: server J and that one worker meet under the key `link/J/W/K`, K being the
worker's incarnation). A worker announces incarnation K under `join/W`; every server, watching
those keys, makes its end. When the worker's process dies, the server's pending receive
fails at once ("Connection reset by peer", measured in ~10 ms): the server reads it as that worker
leaving, and the next incarnation's announcement as its return.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist

SERVER, WORKER = 0, 1  # ranks within a link


def job_store(timeout_s: float) -> dist.Store:
    """A client connection of our own to the job's TCP store (what the elastic agent set up), per attempt."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=timeout_s))
    return dist.PrefixStore(f"shoal-ps-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def connect(store: dist.Store, server: int, worker: int, incarnation: int, role: int, timeout_s: float) -> dist.ProcessGroup:
    """Both ends call this with the same (server index, worker, incarnation); it returns once the other end is there."""
    key = f"link/{server}/{worker}/{incarnation}"
    return dist.ProcessGroupGloo(dist.PrefixStore(key, store), role, 2, timedelta(seconds=timeout_s))


def announce(store: dist.Store, worker: int, incarnation: int) -> None:
    store.set(f"join/{worker}", str(incarnation))


def announced(store: dist.Store, worker: int) -> int:
    """The newest incarnation worker `worker` announced (-1: none yet)."""
    key = f"join/{worker}"
    return int(store.get(key)) if store.check([key]) else -1
