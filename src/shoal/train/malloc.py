"""Keep freed memory in the process heap between training steps (glibc on Linux).

glibc returns large freed blocks to the operating system and page-faults them back in on the
next step; how often depends on each process's allocation history, so two identical loops can
differ by ~2,000 page faults and ~10% throughput a step (measured in BENCHMARKS.md, issue 2).
Fixing the thresholds with mallopt(3) makes every step reuse the previous step's memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value: blocks below it come from the heap
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top is handed back only beyond this


def keep_freed_memory() -> bool:
    """Apply the thresholds; False where the C library is not glibc (nothing to tune there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
