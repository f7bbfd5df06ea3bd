"""One Shoal line when the elastic agent restarts the workers: which rank failed, why, and restart k of n.

torchelastic's own report of a restart is a traceback per worker plus agent log lines (quieted by
local.py). The agent keeps the failure (rank, exit code or signal, the worker's error message) in
its monitoring result and logs nothing of it, so the agent class the launcher builds is swapped for
a subclass that reads that result, for the duration of one launch.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys

import torch.distributed.launcher.api as launcher_api
from torch.distributed.elastic.agent.server.api import WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent


def describe(failure) -> str:
    """A worker's failure in words: its own error message, else the signal or exit code that ended it."""
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    text = str(message or "").strip().splitlines()
    if text and not text[0].startswith("Signal ") and "To enable traceback" not in text[0]:
        return text[0].removeprefix("WorkerFailure: ")
    if failure.exitcode is not None and failure.exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-failure.exitcode).name}"
    return f"exit code {failure.exitcode}"


def root_failure(failures: dict) -> tuple:
    """The failure that caused the others: a rank killed by a signal before one whose collective lost it (both can be
    in one monitoring pass), then the earliest, then the lowest rank."""
    def order(item):
        rank, failure = item
        return (not (failure.exitcode is not None and failure.exitcode < 0), failure.timestamp, rank)

    return min(failures.items(), key=order)


class ReportingAgent(LocalElasticAgent):
    """LocalElasticAgent that says, in one line, why it is about to restart the workers."""

    def _monitor_workers(self, worker_group):
        result = super()._monitor_workers(worker_group)
        if result.state in (WorkerState.FAILED, WorkerState.UNHEALTHY) and self._remaining_restarts > 0:
            spec = worker_group.spec
            done = spec.max_restarts - self._remaining_restarts + 1
            rank, failure = root_failure(result.failures) if result.failures else (None, None)
            who = f"worker rank {rank} on {socket.gethostname()}" if rank is not None else "a worker"
            why = describe(failure) if failure is not None else "unhealthy"
            print(f"{who} failed ({why}); restarting the workers, restart {done} of {spec.max_restarts}: they resume from "
                  f"the newest checkpoint", file=sys.stderr, flush=True)
        return result


@contextlib.contextmanager
def reporting_restarts():
    """While a launch runs, the launcher builds ReportingAgent instead of LocalElasticAgent."""
    original = launcher_api.LocalElasticAgent
    launcher_api.LocalElasticAgent = ReportingAgent
    try:
        yield
    finally:
        launcher_api.LocalElasticAgent = original
