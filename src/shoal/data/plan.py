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
from shoal.errors import ShoalError

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

    def order_slice(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Positions [start, stop) of the epoch's sample order."""
        return self.epoch_order(epoch)[start:stop]

    def step(self, epoch: int, step: int, shares: list[float] | None = None) -> list[np.ndarray]:
        """Dataset indices of every rank at (epoch, step); the global batch is their union. `shares` (scope "batch"
        only; one positive number per rank, e.g. sample counts of a full batch) split every batch in proportion
        (largest remainder); None deals equal parts."""
        if self.scope == "batch":
            batch = self.order_slice(epoch, step * self.global_batch, (step + 1) * self.global_batch)
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


@dataclass(frozen=True)
class StreamPlan(BatchPlan):
    """`data.read = "stream"`: the epoch's order visits blocks of `block` consecutive samples, so a reader needs one block
    at a time. Shuffled, the blocks come in a seeded order and the samples inside each block in a seeded order (both new
    every epoch); unshuffled, the order is the files' row order. Either way it depends on the seed alone, never on the
    world size, so batches are dealt exactly as under `BatchPlan` and one process sees the same batches as N."""

    block: int = 65536

    def epoch_order(self, epoch: int) -> np.ndarray:
        return self.order_slice(epoch, 0, self.n_samples)

    def order_slice(self, epoch: int, start: int, stop: int) -> np.ndarray:
        order, ends = _blocks(self.n_samples, self.block, self.seed, self.shuffle, epoch)
        stop = min(stop, self.n_samples)
        parts = []
        for k in range(int(np.searchsorted(ends, start, side="right")), int(np.searchsorted(ends, stop, side="left")) + 1):
            if k >= len(order) or start >= stop:
                break
            b, size = int(order[k]), int(min(self.block, self.n_samples - order[k] * self.block))
            begin = int(ends[k]) - size
            lo, hi = max(start, begin) - begin, min(stop, int(ends[k])) - begin
            inside = _permutation(size, self.seed, 5, epoch, b)[lo:hi] if self.shuffle else np.arange(lo, hi)
            parts.append(b * self.block + inside)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@lru_cache(maxsize=4)
def _blocks(n: int, block: int, seed: int, shuffle: bool, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's block order and where each block ends in the sample order."""
    count = -(-n // block)
    order = _permutation(count, seed, 4, epoch) if shuffle else np.arange(count)
    return order, np.cumsum(np.minimum(block, n - order * block))


def plan_for(cfg: JobConfig, n_samples: int, world: int, dataset=None) -> BatchPlan:
    """The job's batch plan over `world` data-parallel ranks (replicas x shards; tp and pp peers share one). With
    `data.lanes`, the lane plan over the units of `dataset` (shoal.data.lanes); without a data set, a plan of the same
    steps (what checks before training need)."""
    d = cfg.data
    if d.lanes and world and d.lanes % world:
        raise ShoalError(f"data.lanes = {d.lanes} is not a multiple of the {world} data-parallel ranks; each rank serves whole "
                         f"lanes: set data.lanes to a multiple of {world} (keep it when the world changes, or the order changes)")
    units = dataset.units() if d.lanes and hasattr(dataset, "units") else None
    if units is not None:
        from shoal.data.lanes import LanePlan

        return LanePlan(n_samples, cfg.train.global_batch_size, world, d.partition, d.partition_scope, d.shuffle, d.drop_last,
                        cfg.seed, tuple(int(u) for u in units), d.lanes, "unit" if d.read == "stream" else "lane")
    if d.read == "stream":
        return StreamPlan(n_samples, cfg.train.global_batch_size, world, d.partition, d.partition_scope, d.shuffle, d.drop_last,
                          cfg.seed, d.stream_block_rows)
    return BatchPlan(n_samples, cfg.train.global_batch_size, world, d.partition, d.partition_scope, d.shuffle, d.drop_last, cfg.seed)


def rank_epoch(plan: BatchPlan, epoch: int, rank: int, shares: list[int] | None = None) -> np.ndarray:
    """Every sample `rank` reads in `epoch` (what it must hold to read no other)."""
    if getattr(plan, "scope", "batch") == "dataset" and not getattr(plan, "drop_last", False):
        return _shards(plan)[rank]  # a fixed shard, whatever the order inside it
    return np.concatenate([plan.step(epoch, s, shares)[rank] for s in range(plan.steps_per_epoch())] or [np.zeros(0, np.int64)])


def total_steps(cfg: JobConfig, plan: BatchPlan) -> int:
    return cfg.train.steps or cfg.train.epochs * plan.steps_per_epoch()


@lru_cache(maxsize=16)
def _permutation(n: int, seed: int, *stream: int) -> np.ndarray:
    """Cached: every step of an epoch slices the same order."""
    return rng_for(seed, *stream).permutation(n)


@lru_cache(maxsize=4)
def _shards(plan: BatchPlan) -> list[np.ndarray]:
    return plan.shards()
