"""Deal sample indices to ranks. Every rank computes the deal for all ranks, so no rank needs to ask another."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

STRATEGIES = ("contiguous", "round_robin", "random")


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    """A generator for one (seed, epoch, step, ...) stream: reproducible and independent of the world size."""
    return np.random.default_rng([seed & 0xFFFFFFFF, *stream])


def split_sizes(n: int, shares: Sequence[float]) -> list[int]:
    """Split n samples in proportion to `shares` (largest-remainder rounding): integers that sum to n, each within one
    of its exact quota n * share / sum(shares). Computed exactly (fractions of the given numbers), ties going to the
    lower rank, so every rank gets the same sizes from the same shares."""
    if not shares or not all(math.isfinite(s) and s > 0 for s in shares):
        raise ValueError(f"shares must be positive finite numbers, got {list(shares)}")
    exact = [Fraction(s) for s in shares]
    total = sum(exact)
    quotas = [n * s / total for s in exact]
    sizes = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (sizes[i] - quotas[i], i))  # largest remainder first
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


def deal(n: int, world: int, strategy: str, seed: int = 0, *stream: int, sizes: Sequence[int] | None = None) -> list[np.ndarray]:
    """Split range(n) into `world` disjoint parts that cover it; sizes differ by at most one, or are `sizes` (summing to n).

    With `sizes`, "contiguous" cuts consecutive runs, "random" cuts a seeded permutation, and "round_robin" interleaves
    evenly (rank r's k-th sample sits near position (k + 1/2) / sizes[r] of the batch). Equal sizes deal exactly as
    without them."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown partition strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    idx = np.arange(n)
    if sizes is not None:
        if len(sizes) != world or sum(sizes) != n or min(sizes) < 0:
            raise ValueError(f"sizes {list(sizes)} must be {world} non-negative counts summing to {n}")
        if strategy == "round_robin":
            owner = np.repeat(np.arange(world), sizes)
            where = np.concatenate([(np.arange(m) + 0.5) / m for m in sizes if m] or [np.zeros(0)])
            owner = owner[np.lexsort((owner, where))]  # by position, ties to the lower rank: equal sizes give idx[r::world]
            return [idx[owner == r] for r in range(world)]
        if strategy == "random":
            idx = rng_for(seed, 1, *stream).permutation(n)
        return np.split(idx, np.cumsum(sizes)[:-1])
    if strategy == "round_robin":
        return [idx[r::world] for r in range(world)]
    if strategy == "random":
        idx = rng_for(seed, 1, *stream).permutation(n)
    return list(np.array_split(idx, world))
