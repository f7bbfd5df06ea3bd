"""How long a call takes on a shared machine: the fastest of a few calls, since other load only ever adds time."""

from __future__ import annotations

import time
from collections.abc import Callable


def fastest(fn: Callable[[], object], repeats: int = 5) -> float:
    """Seconds of the fastest of `repeats` calls of fn(), after one warm-up call (first calls allocate and connect)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
