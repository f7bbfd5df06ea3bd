"""Deal sample indices to ranks. Every rank computes the deal for all ranks, so no rank needs to ask another."""

from __future__ import annotations

import numpy as np

STRATEGIES = ("contiguous", "round_robin", "random")


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    """A generator for one (seed, epoch, step, ...) stream: reproducible and independent of the world size."""
    return np.random.default_rng([seed & 0xFFFFFFFF, *stream])


def deal(n: int, world: int, strategy: str, seed: int = 0, *stream: int) -> list[np.ndarray]:
    """Split range(n) into `world` disjoint parts that cover it; sizes differ by at most one."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown partition strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    idx = np.arange(n)
    if strategy == "round_robin":
        return [idx[r::world] for r in range(world)]
    if strategy == "random":
        idx = rng_for(seed, 1, *stream).permutation(n)
    return list(np.array_split(idx, world))
