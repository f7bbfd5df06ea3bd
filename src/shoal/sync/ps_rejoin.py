"""ps.rejoin, the worker's side: its training runs in a child process, started again when it dies, and it reads
only its own share of each global batch, so no worker ever waits for another.

The elastic agent watches the worker's own process, which builds everything (model, data, trainer), then
forks the training: the agent never sees the child die, so it restarts nobody. A child killed by a signal
is forked again from the same untouched state (milliseconds, nothing rebuilt), announces its next
incarnation, and every server sends it its current range and how many steps it had pushed there; it goes on
from the step after the fewest. A child that raises, or a run out of rejoins (`checkpoint.max_restarts`),
ends the worker as any failure does. The child runs torch on one thread: OpenMP's pool does not survive
a fork (a child of a parent that used two threads hangs in its first matmul, measured).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from shoal.errors import ShoalError


class WorkerShare:
    """A batch plan of one worker: at each step, only its share of the job's global batch (dealt over all workers),
    so that the trainer's loss, records and evaluation need nobody else. Everything else is the job's plan."""

    def __init__(self, plan, worker: int):
        self.plan, self.worker = plan, worker

    def __getattr__(self, name: str) -> Any:
        return getattr(self.plan, name)

    @property
    def world(self) -> int:
        return 1

    @property
    def global_batch(self) -> int:
        return self.plan.local_batch

    def step(self, epoch: int, step: int, shares=None) -> list[np.ndarray]:
        return [self.plan.step(epoch, step, shares)[self.worker]]


def supervise(rank: int, rejoins: int, start: Callable[[int], None], fit: Callable[[int], Any], keep: Callable[[Any], Any]) -> Any:
    """Run `start(k)` then `fit(k)` in a child for incarnation k = 0, 1, ...; a child killed by a signal is forked
    again, at most `rejoins` times. `keep(result)` turns the child's result into what crosses the pipe (and back)."""
    delay = float(os.environ.get("SHOAL_TEST_REJOIN_DELAY_S", "0"))  # test-only: how long a dead worker stays away
    for incarnation in range(rejoins + 1):
        if incarnation and delay:
            time.sleep(delay)
        read, write = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the training child: whatever happens, it leaves through os._exit
            os.close(read)
            _die_with(parent)
            try:
                torch.set_num_threads(1)
                start(incarnation)
                payload = pickle.dumps(("ok", keep(fit(incarnation))))
            except BaseException as err:  # noqa: BLE001 - the parent re-raises it
                payload = pickle.dumps(("error", err if _picklable(err) else RuntimeError(f"{type(err).__name__}: {err}")))
            with os.fdopen(write, "wb") as pipe:
                pipe.write(payload)
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        if data:
            kind, value = pickle.loads(data)
            if kind == "error":
                raise value
            return value
        if not os.WIFSIGNALED(status):
            raise ShoalError(f"worker rank {rank}: its training process ended without a result (exit status {os.WEXITSTATUS(status)})")
        why = signal.Signals(os.WTERMSIG(status)).name
        if incarnation == rejoins:
            raise ShoalError(f"worker rank {rank}: its training process was killed by {why}, and it has rejoined {rejoins} times "
                             "(checkpoint.max_restarts); raise it to allow more")
        print(f"worker rank {rank}: its training process was killed by {why}; the other workers go on, and it rejoins "
              f"with the current parameters (rejoin {incarnation + 1} of {rejoins})", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def _die_with(parent: int) -> None:
    """The child gets SIGKILL when its parent dies (the agent stopping the job stops the worker's process, not its
    child): no training process outlives its job."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    if os.getppid() != parent:  # it died before that took effect
        os._exit(1)


def _picklable(err: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(err))
        return True
    except Exception:  # noqa: BLE001
        return False


def portable(result):
    """A FitResult without its module (its state dict instead), to cross the pipe."""
    return dataclasses.replace(result, model={k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()})
