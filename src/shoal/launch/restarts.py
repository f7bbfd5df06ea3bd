"""One Shoal line when the elastic agent restarts the workers: which rank failed, why, and restart k of n;
and, across machines, one line when a new rendezvous round changes who takes part (a node left, joined, came back).

torchelastic's own report of a restart is a traceback per worker plus agent log lines (quieted by
local.py). The agent keeps the failure (rank, exit code or signal, the worker's error message) in
its monitoring result and logs nothing of it, so the agent class the launcher builds is swapped for
a subclass that reads that result, for the duration of one launch.
"""

from __future__ import annotations

import contextlib
import re
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
        return re.sub(r"\[/[^\]]*\]\s*", "", text[0].removeprefix("WorkerFailure: "))  # gloo's source path
    if failure.exitcode is not None and failure.exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-failure.exitcode).name}"
    return f"exit code {failure.exitcode}"


def membership(before: tuple[int, int], after: tuple[int, int]) -> str:
    """What a new rendezvous round did to the job, from (nodes, processes) before and after it."""
    (nodes0, procs0), (nodes, procs) = before, after
    now = f"{nodes} node{'s' if nodes != 1 else ''}, {procs} processes (were {nodes0}, {procs0})"
    if nodes < nodes0:
        return (f"the job goes on without {nodes0 - nodes} node{'s' if nodes0 - nodes != 1 else ''} that left or cannot be reached: "
                f"{now}; a node started again joins at the next rendezvous")
    if nodes > nodes0:
        return f"{nodes - nodes0} node{'s' if nodes - nodes0 != 1 else ''} joined: the job goes on with {now}"
    return f"all {nodes} nodes met again: the job goes on with {procs} processes"


def root_failure(failures: dict) -> tuple:
    """The failure that caused the others: a rank killed by a signal before one whose collective lost it (both can be
    in one monitoring pass), then the earliest, then the lowest rank."""
    def order(item):
        rank, failure = item
        return (not (failure.exitcode is not None and failure.exitcode < 0), failure.timestamp, rank)

    return min(failures.items(), key=order)


class ReportingAgent(LocalElasticAgent):
    """LocalElasticAgent that says, in one line, why it is about to restart the workers, and (several machines) who
    takes part after each new rendezvous round."""

    across_nodes = False  # set for one launch by reporting_restarts(); one machine's rounds never change membership
    _met: tuple[int, int] | None = None

    def _rendezvous(self, worker_group):
        super()._rendezvous(worker_group)
        met = (worker_group.group_world_size, worker_group.workers[0].world_size if worker_group.workers else 0)
        if self.across_nodes and self._met is not None:
            print(f"rendezvous: {membership(self._met, met)}; the workers resume from the newest checkpoint",
                  file=sys.stderr, flush=True)
        self._met = met

    failed: tuple[int | None, str] | None = None  # the last failure: rank and cause, for the restart and the final line

    def _monitor_workers(self, worker_group):
        result = super()._monitor_workers(worker_group)
        if result.state in (WorkerState.FAILED, WorkerState.UNHEALTHY):
            type(self).failed = self._cause(result, worker_group)
            if self._remaining_restarts > 0:
                rank, why = type(self).failed
                done = worker_group.spec.max_restarts - self._remaining_restarts + 1
                who = f"worker rank {rank} on {socket.gethostname()}" if rank is not None else "a worker"
                print(f"{who} failed ({why}); restarting the workers, restart {done} of {worker_group.spec.max_restarts}: "
                      f"they resume from the newest checkpoint", file=sys.stderr, flush=True)
        return result

    def _cause(self, result, worker_group) -> tuple[int | None, str]:
        """The failed rank and why. The agent records one failure per pass, whichever exit it saw first: a peer whose
        collective lost the killed worker may come first, so a worker killed by a signal is named over it."""
        rank, failure = root_failure(result.failures) if result.failures else (None, None)
        why = describe(failure) if failure is not None else "unhealthy"
        killed = self._killed_by_signal(worker_group)
        return killed if killed is not None and not why.startswith("killed by ") else (rank, why)

    def _killed_by_signal(self, worker_group) -> tuple[int, str] | None:
        """A worker of this node that died by a signal other than the agent's own SIGTERM. The agent records one
        failure per monitoring pass, whichever exit it saw first: when the killed worker's peers failed in the same
        pass (their collectives lost it), it may be a peer's; the exit codes of all the workers tell the cause."""
        processes = getattr(getattr(self._pcontext, "_pc", None), "processes", None) or []
        for worker in worker_group.workers:
            code = processes[worker.local_rank].exitcode if worker.local_rank < len(processes) else None
            if code is not None and code < 0 and -code != signal.SIGTERM:
                with contextlib.suppress(ValueError):
                    return worker.global_rank, f"killed by {signal.Signals(-code).name}"
        return None


@contextlib.contextmanager
def reporting_restarts(across_nodes: bool = False):
    """While a launch runs, the launcher builds ReportingAgent instead of LocalElasticAgent (a class of its own per
    launch, which it yields: its `failed` holds the last failure's rank and cause)."""
    original = launcher_api.LocalElasticAgent
    agent = type("ReportingAgent", (ReportingAgent,), {"across_nodes": across_nodes, "failed": None})
    launcher_api.LocalElasticAgent = agent
    try:
        yield agent
    finally:
        launcher_api.LocalElasticAgent = original
