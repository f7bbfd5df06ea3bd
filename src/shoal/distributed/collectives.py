"""Small collectives on the group that trains, for records, evaluation, health and memory figures.

Every helper takes a `TrainingGroup` instead of reaching for the whole world, so ranks that
do not train (a parameter server's servers) never have to join a logging all-reduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TrainingGroup:
    """The ranks that compute gradients; `group` None is the default (whole-world) group."""

    group: dist.ProcessGroup | None
    rank: int  # this rank's index within the group
    size: int
    ranks: tuple[int, ...]  # global ranks, in group order

    @classmethod
    def world(cls) -> TrainingGroup:
        size = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        return cls(None, rank, size, tuple(range(size)))

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> np.ndarray:
        """Sum small per-rank numbers over the group in one all-reduce (float64)."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.size > 1:
            dist.all_reduce(t, group=self.group)
        return t.numpy()

    def max(self, values: list[float]) -> np.ndarray:
        t = torch.tensor(values, dtype=torch.float64)
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return t.numpy()

    def gather(self, values: list[float]) -> np.ndarray:
        """Every rank's numbers as rows of one array, on every rank."""
        mine = torch.tensor(values, dtype=torch.float64)
        if self.size == 1:
            return mine.numpy()[None]
        every = [torch.zeros_like(mine) for _ in range(self.size)]
        dist.all_gather(every, mine, group=self.group)
        return torch.stack(every).numpy()

    def gather_object(self, obj) -> list:
        if self.size == 1:
            return [obj]
        every: list = [None] * self.size
        dist.all_gather_object(every, obj, group=self.group)
        return every

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier(group=self.group)
