"""Test-only fault injection, so fault-tolerance and health tests break a real worker at an exact point.

- SHOAL_TEST_KILL="RANK:STEP" sends SIGKILL to rank RANK right after optimizer step STEP;
  "RANK:STEP:save" kills it inside the checkpoint save of step STEP, after its shards are
  written and before the commit.
- SHOAL_TEST_HANG="RANK:STEP" makes that rank sleep forever after step STEP.
- SHOAL_TEST_SLOW_RANK="1" (or "0,2", or "*") burns SHOAL_TEST_SLOW_S (default 0.05) CPU
  seconds per step in those ranks, like a slower core.

Kill and hang fire on the first attempt only (a restarted worker lives); the slowdown lasts.
"""

from __future__ import annotations

import os
import signal
import time


def _first_attempt() -> bool:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0


def fault_point(where: str, rank: int, step: int) -> None:
    spec = os.environ.get("SHOAL_TEST_KILL")
    if not spec or not _first_attempt():
        return
    target_rank, target_step, *place = spec.split(":")
    if int(target_rank) == rank and int(target_step) == step and (place[0] if place else "step") == where:
        os.kill(os.getpid(), signal.SIGKILL)


def hang(rank: int, step: int) -> None:
    if os.environ.get("SHOAL_TEST_HANG") == f"{rank}:{step}" and _first_attempt():
        while True:
            time.sleep(3600)


def slow_down(rank: int) -> None:
    slow = os.environ.get("SHOAL_TEST_SLOW_RANK")
    if slow and (slow == "*" or str(rank) in slow.split(",")):
        until = time.process_time() + float(os.environ.get("SHOAL_TEST_SLOW_S", "0.05"))
        while time.process_time() < until:
            pass
