"""Workers forked from a server that imported torch and Shoal once, instead of spawned fresh.

A spawned worker imports torch, Shoal and torchmetrics again: 4-5 s of CPU each, paid again at every
restart. multiprocessing's fork server is a fresh single-threaded process (not the launcher, whose
threads' locks must not be forked) that imports them once; each worker is a fork of it and starts at
once. `warm` starts it early, so its imports overlap the launcher's own checks.

A forked worker has the server's environment, not the launcher's: `with_env` puts back the launcher's
environment of the moment of the launch (with the elastic agent's per-worker variables on top) and its
thread count, as a spawned worker would have them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterable
from multiprocessing import forkserver
from typing import Any

_IMPORTED_IN = os.getpid()  # in a forked worker: the server's pid, since the server imported this module first
_IMPORT_ENV = dict(os.environ)


def method() -> str:
    """The start method the launcher passes to torch.distributed.elastic. SHOAL_START_METHOD=spawn spawns the workers
    as before (an escape hatch, and the baseline of benchmarks/bench_startup.py)."""
    if os.environ.get("SHOAL_START_METHOD") == "spawn":
        return "spawn"
    usable = "forkserver" in multiprocessing.get_all_start_methods() and hasattr(getattr(forkserver, "_forkserver", None),
                                                                                "_forkserver_alive_fd")  # see _let_server_go
    return "forkserver" if usable else "spawn"


def warm(modules: Iterable[str]) -> None:
    """Start the fork server now, importing `modules` (names; any that fail to import are left to the worker).
    A server already running keeps what it imported."""
    if method() != "forkserver":
        return
    multiprocessing.get_context("forkserver").set_forkserver_preload(["shoal.launch.server_exit", __name__, *modules])
    forkserver.ensure_running()


def with_env(env: dict[str, str], entry: Callable[..., Any], *args: Any) -> Any:
    """Run entry(*args) in a worker with `env`, the launcher's environment at launch, as its environment."""
    if os.getpid() != _IMPORTED_IN:  # forked from the server: its environment is the server's, from when it started
        _let_server_go()
        agent = {k: v for k, v in os.environ.items() if _IMPORT_ENV.get(k) != v}  # what the elastic agent set for this worker
        os.environ.clear()
        os.environ.update(env)
        os.environ.update(agent)
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:  # OpenMP read the variable when the server imported torch
            import torch

            torch.set_num_threads(int(threads))
    return entry(*args)


def _let_server_go() -> None:
    """A forked worker holds the write end of the server's "alive" pipe, which keeps the server running while any
    worker lives. Closing it lets the server end with the launcher, and the workers with the server (their parent;
    PR_SET_PDEATHSIG): a SIGKILLed launcher takes its workers along, as when they were spawned."""
    server = forkserver._forkserver
    fd, server._forkserver_alive_fd = server._forkserver_alive_fd, None
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
