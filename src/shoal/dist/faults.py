"""Test-only fault injection, so fault-tolerance tests kill a real worker at an exact point.

SHOAL_TEST_KILL="RANK:STEP" sends SIGKILL to rank RANK right after optimizer step STEP;
"RANK:STEP:save" kills it inside the checkpoint save of step STEP, after its shards are
written and before the commit. It fires on the first attempt only (a restarted worker lives).
"""

from __future__ import annotations

import os
import signal


def fault_point(where: str, rank: int, step: int) -> None:
    spec = os.environ.get("SHOAL_TEST_KILL")
    if not spec or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return
    target_rank, target_step, *place = spec.split(":")
    if int(target_rank) == rank and int(target_step) == step and (place[0] if place else "step") == where:
        os.kill(os.getpid(), signal.SIGKILL)
