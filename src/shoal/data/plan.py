"""Which samples each rank uses at every step.

scope "batch": the epoch's sample order depends only on the seed; global batch k is a fixed
slice of it, and only the dealing of that batch to ranks depends on the world size. Training
on 1, 2 or 4 processes therefore sees the same global batches, which is what makes data
parallel numerically equal to single-process training (and lets a run resume on another
world size). Batch shares (`step(..., shares=)`: fixed, or following measured speed) change only
how many of a batch's samples each rank gets, never which samples make the batch.

scope "dataset": each rank owns one fixed shard of the data for the whole run (data never
moves between nodes); global batch k is the union of every rank's k-th local slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from shoal.data.partition import deal, rng_for, split_sizes

if TYPE_CHECKING:
    from shoal.config import JobConfig


@dataclass(frozen=True)
class BatchPlan:
    n_samples: int
    global_batch: int
    world: int
    strategy: str = "contiguous"
    scope: str = "batch"
    shuffle: bool = True
    drop_last: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scope not in ("batch", "dataset"):
            raise ValueError(f"unknown partition scope {self.scope!r}")

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world

    def shards(self) -> list[np.ndarray]:
        """scope "dataset": the fixed shard of each rank."""
        return deal(self.n_samples, self.world, self.strategy, self.seed)

    def steps_per_epoch(self) -> int:
        if self.scope == "batch":
            round_ = math.floor if self.drop_last else math.ceil
            return int(round_(self.n_samples / self.global_batch))
        sizes = [len(s) for s in self.shards()]
        if self.drop_last:
            return min(sizes) // self.local_batch
        return math.ceil(max(sizes) / self.local_batch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n_samples)
        return _permutation(self.n_samples, self.seed, 0, epoch)

    def step(self, epoch: int, step: int, shares: list[float] | None = None) -> list[np.ndarray]:
        """Dataset indices of every rank at (epoch, step); the global batch is their union. `shares` (scope "batch"
        only; one positive number per rank, e.g. sample counts of a full batch) split every batch in proportion
        (largest remainder); None deals equal parts."""
        if self.scope == "batch":
            batch = self.epoch_order(epoch)[step * self.global_batch : (step + 1) * self.global_batch]
            sizes = None if shares is None else split_sizes(len(batch), shares)
            return [batch[part] for part in deal(len(batch), self.world, self.strategy, self.seed, 2, epoch, step, sizes=sizes)]
        if shares is not None:
            raise ValueError('batch shares need partition scope "batch"')
        out = []
        for rank, shard in enumerate(_shards(self)):
            if self.shuffle:
                shard = shard[_permutation(len(shard), self.seed, 3, epoch, rank)]
            out.append(shard[step * self.local_batch : (step + 1) * self.local_batch])
        return out


def plan_for(cfg: JobConfig, n_samples: int, world: int) -> BatchPlan:
    """The job's batch plan over `world` data-parallel ranks (replicas x shards; tp and pp peers share one)."""
    d = cfg.data
    return BatchPlan(n_samples, cfg.train.global_batch_size, world, d.partition, d.partition_scope, d.shuffle, d.drop_last, cfg.seed)


def total_steps(cfg: JobConfig, plan: BatchPlan) -> int:
    return cfg.train.steps or cfg.train.epochs * plan.steps_per_epoch()


@lru_cache(maxsize=16)
def _permutation(n: int, seed: int, *stream: int) -> np.ndarray:
    """Cached: every step of an epoch slices the same order."""
    return rng_for(seed, *stream).permutation(n)


@lru_cache(maxsize=4)
def _shards(plan: BatchPlan) -> list[np.ndarray]:
    return plan.shards()
