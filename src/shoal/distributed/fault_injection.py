"""Test-only fault injection, so fault-tolerance and health tests break a real worker at an exact point.

- SHOAL_TEST_KILL="RANK:STEP" sends SIGKILL to rank RANK right after optimizer step STEP;
  "RANK:STEP:save" kills it inside the checkpoint save of step STEP, after its shards are
  written and before the commit; "RANK:STEP:own" (ps.rejoin) kills the worker's own process, the
  one the agent started, from its training child after step STEP (the child dies with it);
  "RANK:STEP:between" (ps.rejoin, several servers) kills a worker's training child once its push of
  step STEP went to server 0 and before the others (first incarnation only). A parameter server
  rank is killed right after it took in worker 0's push of step STEP.
- SHOAL_TEST_HANG="RANK:STEP" makes that rank sleep forever after step STEP; SHOAL_TEST_HANG_BEFORE="RANK:TEXT"
  before the first phase outside the steps whose description contains TEXT ("evaluation after step 4").
- SHOAL_TEST_SLOW_RANK="1" (or "0,2", or "*") burns SHOAL_TEST_SLOW_S (default 0.05) CPU
  seconds per step in those ranks, like a slower core.
- SHOAL_TEST_PACE_S="0.1" makes every rank sleep that long before each step: wall time without CPU, so the
  long fault tests (link cuts between machines) pace their steps without loading a small machine.
- SHOAL_TEST_SLOW_FACTOR="1:2.0" (or "1:2.0,3:1.5") gives every rank a simulated device for the batch-balance
  tests and benchmark: each burns SHOAL_TEST_SAMPLE_S (default 0.001) CPU seconds per sample it processes in a
  step, times FACTOR on the ranks named (1 elsewhere), so rank 1 takes 2x as long per sample.

Kill and hang fire on the first attempt only (a restarted worker lives); the slowdowns last.
The environment is read once, when a worker builds its loop: each function returns the hook
for that rank, and a rank no variable names gets `None` (the loop then calls nothing at all).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

Hook = Callable[[int], None] | None


def _first_attempt() -> bool:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0


def _kill_step(rank: int, where: str) -> int | None:
    spec = os.environ.get("SHOAL_TEST_KILL")
    if not spec or not _first_attempt():
        return None
    target_rank, target_step, *place = spec.split(":")
    return int(target_step) if int(target_rank) == rank and (place[0] if place else "step") == where else None


def _killer(at: int | None, parent: bool = False, delay_s: float = 0.0) -> Hook:
    if at is None:
        return None

    def kill(step: int) -> None:
        if step == at:
            time.sleep(delay_s)
            os.kill(os.getppid() if parent else os.getpid(), signal.SIGKILL)

    return kill


def kill_after_step(rank: int) -> Hook:
    """Called after optimizer step N (and its evaluation): SIGKILL at the step SHOAL_TEST_KILL names."""
    own = _kill_step(rank, "own")
    return _killer(own, parent=True) if own is not None else _killer(_kill_step(rank, "step"))


def kill_between_pushes(rank: int) -> Hook:
    """Called by a parameter-server worker once its push of step N is on its way to server 0, before the other servers
    (it dies 0.2 s later: the push has left by then)."""
    return _killer(_kill_step(rank, "between"), delay_s=0.2)


def kill_before_commit(rank: int) -> Hook:
    """Called inside a checkpoint save of step N, after this rank's shards are written, before the commit."""
    return _killer(_kill_step(rank, "save"))


def hang_after_step(rank: int) -> Hook:
    """Called once step N counts as done (heartbeats report it): sleep forever at SHOAL_TEST_HANG's step."""
    spec = os.environ.get("SHOAL_TEST_HANG")
    if not spec or not _first_attempt() or int(spec.split(":")[0]) != rank:
        return None
    at = int(spec.split(":")[1])

    def hang(step: int) -> None:
        while step == at:
            time.sleep(3600)

    return hang


def hang_before(rank: int) -> Callable[[str], None] | None:
    """Called before a phase outside the steps (Health.guard): SHOAL_TEST_HANG_BEFORE="RANK:TEXT" sleeps forever
    before the first phase whose description contains TEXT (e.g. "evaluation after step 4")."""
    spec = os.environ.get("SHOAL_TEST_HANG_BEFORE")
    if not spec or not _first_attempt() or int(spec.split(":")[0]) != rank:
        return None
    text = spec.split(":", 1)[1]

    def hang(what: str) -> None:
        while text in what:
            time.sleep(3600)

    return hang


def slow_step(rank: int) -> Hook:
    """Called inside every step's busy time: burn CPU like a slower core."""
    slow = os.environ.get("SHOAL_TEST_SLOW_RANK")
    if not slow or not (slow == "*" or str(rank) in slow.split(",")):
        return None
    seconds = float(os.environ.get("SHOAL_TEST_SLOW_S", "0.05"))

    def burn(step: int) -> None:
        until = time.process_time() + seconds
        while time.process_time() < until:
            pass

    return burn


def pace_step(rank: int) -> Hook:
    """Called before every step: sleep SHOAL_TEST_PACE_S seconds (every rank alike)."""
    seconds = float(os.environ.get("SHOAL_TEST_PACE_S", "0") or 0)
    if seconds <= 0:
        return None
    return lambda step: time.sleep(seconds)


def slow_samples(rank: int) -> Callable[[int], None] | None:
    """Called with the samples this rank is about to compute in a step: burn this thread's CPU in proportion
    (SHOAL_TEST_SLOW_FACTOR), like a device of that speed. Busy CPU, so the speed estimate sees it."""
    spec = os.environ.get("SHOAL_TEST_SLOW_FACTOR")
    if not spec:
        return None
    factors = {int(r): float(f) for r, f in (part.split(":") for part in spec.split(","))}
    per_sample = float(os.environ.get("SHOAL_TEST_SAMPLE_S", "0.001")) * factors.get(rank, 1.0)

    def burn(samples: int) -> None:
        until = time.thread_time() + per_sample * samples
        while time.thread_time() < until:
            pass

    return burn
