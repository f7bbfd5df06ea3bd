"""Which inputs each replica reads: contiguous, as even as possible, in input order (the first ranks take one more)."""

from __future__ import annotations


def shard_range(n: int, world: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank's shard: concatenating the shards of ranks 0..world-1 gives 0..n-1 in order."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
