"""Read lanes (`data.lanes = L`): an epoch order in which each rank reads only its own row groups (or stream blocks).

With rows shuffled across the whole training set, a rank's samples lie in every row group, so each rank decodes the
whole file once an epoch to keep 1/N of it. Here the training samples are cut into units (the file's row groups under
`data.read = "rank"`, blocks of `data.stream_block_rows` under `stream`); every epoch the units are shuffled (seeded)
and dealt round robin to L lanes, and the lanes are merged into one epoch order in proportion to their sizes (the j-th
of a lane's n_l samples comes at time (j + 1/2) / n_l), so every global batch takes about B n_l / n samples from every
lane and all lanes end together. Data-parallel rank r gets the samples of lanes r, r + N, ... of each batch, so it
reads only those lanes' units: 1/N of the file. The order depends on the seed and L, never on the world size, so one
process with the same L sees the same global batches as N (L must be a multiple of N). Inside a lane rows are shuffled
across the whole lane (`rank`: a rank holds its lanes' epoch anyway) or within each unit (`stream`: a unit at a time).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from shoal.data.plan import BatchPlan, _permutation


@dataclass(frozen=True)
class LanePlan(BatchPlan):
    units: tuple[int, ...] = (0,)  # the sample where each unit starts, then the number of samples
    lanes: int = 1
    mix: str = "lane"  # "lane": rows shuffled across a lane; "unit": within each unit

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scope != "batch" or self.lanes % self.world or self.units[-1] != self.n_samples:
            raise ValueError(f"a lane plan needs scope 'batch', lanes a multiple of the world ({self.lanes}, {self.world}) "
                             f"and units covering the {self.n_samples} samples")

    def epoch_order(self, epoch: int) -> np.ndarray:
        return _order(self, epoch)[0]

    def order_slice(self, epoch: int, start: int, stop: int) -> np.ndarray:
        return self.epoch_order(epoch)[start:stop]

    def step(self, epoch: int, step: int, shares: list[float] | None = None) -> list[np.ndarray]:
        """Rank r's part of the global batch: its samples from lanes r, r + N, ..."""
        if shares is not None:
            raise ValueError("batch shares cannot deal lanes: each rank serves whole lanes")
        order, lane = _order(self, epoch)
        lo, hi = step * self.global_batch, (step + 1) * self.global_batch
        owner = lane[lo:hi] % self.world
        return [order[lo:hi][owner == r] for r in range(self.world)]

    def unit_lanes(self, epoch: int) -> np.ndarray:
        """The lane of every unit in `epoch`."""
        return _lanes(self, epoch)[1]


@lru_cache(maxsize=8)
def _lanes(plan: LanePlan, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's unit order and the lane of each unit (by unit number)."""
    count = len(plan.units) - 1
    order = _permutation(count, plan.seed, 6, epoch) if plan.shuffle else np.arange(count)
    lane = np.empty(count, dtype=np.int64)
    lane[order] = np.arange(count) % plan.lanes
    return order, lane


@lru_cache(maxsize=4)
def _order(plan: LanePlan, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's sample order and the lane of each position."""
    starts = np.asarray(plan.units, dtype=np.int64)
    order, lane_of_unit = _lanes(plan, epoch)
    samples, keys, lanes = [], [], []
    for lane in range(plan.lanes):
        mine = order[lane_of_unit[order] == lane]  # this lane's units, in the epoch's order
        parts = []
        for u in mine:
            size = int(starts[u + 1] - starts[u])
            inside = _permutation(size, plan.seed, 7, epoch, int(u)) if plan.shuffle and plan.mix == "unit" else np.arange(size)
            parts.append(starts[u] + inside)
        lane_samples = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if plan.shuffle and plan.mix == "lane":
            lane_samples = lane_samples[_permutation(len(lane_samples), plan.seed, 8, epoch, lane)]
        n = len(lane_samples)
        samples.append(lane_samples)
        keys.append((np.arange(n) + 0.5) / max(n, 1))
        lanes.append(np.full(n, lane, dtype=np.int64))
    samples, keys, lanes = np.concatenate(samples), np.concatenate(keys), np.concatenate(lanes)
    merged = np.lexsort((lanes, keys))  # by time, ties by lane
    return samples[merged], lanes[merged]
