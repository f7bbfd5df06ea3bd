"""Health of a running job: heartbeats, stragglers and hangs, each named by rank, host and pid.

- Heartbeat: a thread in every rank sets one key in the c10d store every `health.heartbeat_s`
  seconds: rank, host, pid, last finished step, collectives issued, time. No collectives.
- Stragglers: a rank's busy time per step is the CPU time it spends in the step; waiting in
  a collective does not count, so the rank everyone waits for stands out even though every
  rank's wall time is the same. At log steps one tiny all_gather compares each rank with the
  median of the others; above `straggler_threshold` x that (and `straggler_min_s` more: steps of
  a few milliseconds jitter by more than any ratio) for `straggler_windows` windows in a row, the
  rank is named in metrics.jsonl and the log.
- Stalls: a step that takes over STALL_MIN_S seconds and STALL_FACTOR x the median of the steps
  before it, and then completes, stalled (a network cut shorter than `dist.timeout_s`, a paused
  peer): one line and a `stall` record say so, since nothing failed and nothing else would.
- Hangs: a collective that times out (after `dist.timeout_s`, the process-group timeout)
  raises CollectiveTimeout naming the ranks that did not arrive (fewer collectives issued than
  this rank, or no heartbeat for a while) with their host, pid and last step.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import numpy as np
import torch.distributed as dist

from shoal.config import JobConfig
from shoal.distributed import fault_injection
from shoal.distributed.collectives import TrainingGroup
from shoal.distributed.env import DistEnv

STALL_MIN_S = 5.0  # a step this long, and
STALL_FACTOR = 20.0  # this many times the usual one, stalled; eval and checkpoints lie outside the step


class CollectiveTimeout(RuntimeError):
    """A collective failed or timed out; the message names the ranks that did not arrive."""


def _sequence_number() -> int:
    """Collectives this rank has issued on the default group (gloo and NCCL count them)."""
    try:
        return int(dist.distributed_c10d._get_default_group()._get_sequence_number_for_group())
    except (RuntimeError, AttributeError):
        return -1


def _health_store(timeout_s: float) -> dist.Store:
    """A client connection of our own to the job's TCP store, so the heartbeat thread shares no socket with training."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=timeout_s))
    return dist.PrefixStore(f"shoal-health-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


class Health:
    """One per rank. `with health.step(n):` around every optimizer step; nothing else to call."""

    def __init__(self, cfg: JobConfig, env: DistEnv, log: Callable[[dict], None], group: TrainingGroup | None = None):
        self.cfg, self.env, self.log = cfg.health, env, log
        self.group = group or TrainingGroup.world()  # the ranks that step together; indices below are within it
        self.timeout_s, self.log_every = cfg.dist.timeout_s, cfg.train.log_every
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.last_step, self.window_busy, self.window_steps = 0, 0.0, 0
        self.busy_s = 0.0  # busy seconds of all steps so far (the batch balance reads it)
        self.slow_windows = np.zeros(self.group.size, dtype=int)
        self.active = self.group.size > 1 and "MASTER_ADDR" in os.environ
        self.hosts = [self.host] * self.group.size
        self.slow_hook = fault_injection.slow_step(env.rank)  # None outside the fault tests
        self.hang_hook = fault_injection.hang_after_step(env.rank)
        self.phase_hang_hook = fault_injection.hang_before(env.rank)
        self.pace_hook = fault_injection.pace_step(env.rank)
        self.recent_s: collections.deque[float] = collections.deque(maxlen=32)  # wall seconds of the last steps
        self.store = None
        if self.active:
            self.hosts = self.group.gather_object(self.host)
            self.store = _health_store(min(self.timeout_s, 30.0))
            if self.cfg.heartbeat_s > 0:
                self._stop = threading.Event()
                threading.Thread(target=self._beat_forever, name="shoal-heartbeat", daemon=True).start()

    # heartbeat
    def beat(self) -> None:
        record = {"rank": self.env.rank, "host": self.host, "pid": self.pid, "step": self.last_step,
                  "seq": _sequence_number(), "time": time.time()}
        self.store.set(f"beat/{self.env.rank}", json.dumps(record))

    def _beat_forever(self) -> None:
        with contextlib.suppress(Exception):  # the store goes away at the end of the job
            while not self._stop.wait(self.cfg.heartbeat_s):
                self.beat()

    def beats(self) -> dict[int, dict]:
        found = {}
        for rank in self.group.ranks:
            key = f"beat/{rank}"
            with contextlib.suppress(Exception):
                if self.store.check([key]):
                    found[rank] = json.loads(self.store.get(key))
        return found

    # one step
    @contextlib.contextmanager
    def step(self, number: int):
        """Times the step's busy (CPU) seconds; a failed collective inside it becomes a CollectiveTimeout naming the absent."""
        if self.pace_hook is not None:
            self.pace_hook(number)
        busy0, wall0 = time.process_time(), time.perf_counter()
        try:
            yield
            if self.slow_hook is not None:
                self.slow_hook(number)
            busy = time.process_time() - busy0
            self.window_busy += busy
            self.busy_s += busy
            self.window_steps += 1
            self.last_step = number
            if self.hang_hook is not None:
                self.hang_hook(number)
            if number % self.log_every == 0 and self.active:
                self._compare_busy(number)
            if self.active:
                self._note_stall(number, time.perf_counter() - wall0)
        except RuntimeError as err:
            self._raise_named(f"at step {number}", err)

    @contextlib.contextmanager
    def guard(self, what: str):
        """Collectives outside a step (records, evaluation, checkpoints): a failed one is named like a step's, not
        left as gloo's raw message. `what` says where, e.g. "in the evaluation after step 8"."""
        if self.phase_hang_hook is not None:
            self.phase_hang_hook(what)
        try:
            yield
        except RuntimeError as err:
            self._raise_named(what, err)

    def _raise_named(self, where: str, err: RuntimeError) -> None:
        if not self.active or isinstance(err, CollectiveTimeout) or not _is_communication_error(err):
            raise err  # a bug in the model or data keeps its own traceback
        raise CollectiveTimeout(self.explain(where, err)) from err

    # stragglers
    def _compare_busy(self, step: int) -> None:
        busy = self.group.gather([self.window_busy / max(self.window_steps, 1)])[:, 0]
        self.window_busy, self.window_steps = 0.0, 0
        for i, step_s in enumerate(busy):
            others = np.median(np.delete(busy, i))
            slow = step_s > self.cfg.straggler_threshold * others and step_s - others > self.cfg.straggler_min_s
            self.slow_windows[i] = self.slow_windows[i] + 1 if slow else 0
            if slow and self.slow_windows[i] % self.cfg.straggler_windows == 0:
                self._report_straggler(step, i, float(step_s), float(others))

    def _report_straggler(self, step: int, i: int, step_s: float, median_s: float) -> None:
        rank = self.group.ranks[i]
        record = {"kind": "straggler", "step": step, "rank": rank, "host": self.hosts[i], "step_s": step_s, "median_s": median_s}
        self.log(record)
        if self.env.is_main:
            print(f"straggler: rank {rank} on {self.hosts[i]} is busy {step_s * 1e3:.1f} ms per step, the others "
                  f"{median_s * 1e3:.1f} ms (median) over the last {self.slow_windows[i]} log windows", file=sys.stderr, flush=True)

    # stalls
    def _note_stall(self, step: int, wall_s: float) -> None:
        usual = float(np.median(self.recent_s)) if len(self.recent_s) >= 3 else None
        if usual is not None and wall_s > STALL_MIN_S and wall_s > STALL_FACTOR * usual:
            self.log({"kind": "stall", "step": step, "stall_s": wall_s, "usual_s": usual})
            if self.env.is_main:
                print(f"stall: step {step} took {wall_s:.1f} s, the usual {usual * 1e3:.0f} ms: the job stalled (a network cut "
                      f"or a paused rank, shorter than dist.timeout_s = {self.timeout_s:g}) and went on without a restart",
                      file=sys.stderr, flush=True)
            return
        self.recent_s.append(wall_s)

    # hangs
    def explain(self, where: str, err: BaseException) -> str:
        """One line: which ranks this rank waited for `where` ("at step 4"), with host, pid and last step from their
        heartbeats."""
        beats, now, mine = self.beats(), time.time(), _sequence_number()
        stale_after = max(3 * self.cfg.heartbeat_s, 2.0)
        absent = []
        for i, rank in enumerate(self.group.ranks):
            if rank == self.env.rank:
                continue
            beat = beats.get(rank)
            if beat is None:
                absent.append(f"rank {rank} (host {self.hosts[i]}, no heartbeat)")
            elif beat["seq"] < mine or now - beat["time"] > stale_after:
                silent = f", silent for {now - beat['time']:.0f} s" if now - beat["time"] > stale_after else ""
                absent.append(f"rank {rank} (host {beat['host']}, pid {beat['pid']}, last step {beat['step']}{silent})")
        lines = str(err).strip().splitlines()
        cause = re.sub(r"^\[[^\]]*\]\s*", "", lines[0])[:160] if lines else type(err).__name__  # drop gloo's source path
        who = "; ".join(absent) if absent else "no rank could be named (all heartbeats current)"
        return (f"collective {where} failed on rank {self.env.rank} (dist.timeout_s = {self.timeout_s:g}): "
                f"did not arrive: {who}; cause: {cause}")

    def close(self) -> None:
        if self.active and self.cfg.heartbeat_s > 0:
            self._stop.set()


def _is_communication_error(err: RuntimeError) -> bool:
    """gloo raises plain RuntimeErrors; NCCL raises DistError subclasses."""
    text = str(err).lower()
    return isinstance(err, getattr(dist, "DistError", ())) or any(
        sign in text for sign in ("gloo", "timed out", "connection closed", "connection reset", "broken pipe", "nccl"))
