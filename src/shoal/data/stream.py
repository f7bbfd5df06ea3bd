"""Parquet data larger than memory (`data.read = "stream"`): rows read block by block, never all at once.

A block is `data.stream_block_rows` consecutive rows of the training range (the files in
order, rows in file order). `StreamPlan` (shoal.data.plan) visits the blocks one after another,
so a rank holds at most two blocks (the one being read and the next, which the prefetch thread
may be reading already), whatever the data's size. The training rows are the first
`1 - eval_fraction` of all rows and evaluation rows the rest (a stream has no random split).
The position, (file, row) of the next training sample, is the checkpoint part "stream";
a restart checks it against its own plan, so changed data or block size is refused, not
silently read from elsewhere.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from shoal.data.parquet_rows import ParquetSource
from shoal.data.plan import StreamPlan
from shoal.errors import ShoalError

CACHED_BLOCKS = 2


class StreamRows(Dataset):
    """Samples i = global rows first + i of a ParquetSource, read and cached a block at a time."""

    def __init__(self, source: ParquetSource, first: int, n: int, block: int):
        self.source, self.first, self.n, self.block = source, first, n, block
        self.cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.lock = threading.Lock()
        self.capacity = CACHED_BLOCKS  # blocks kept at once; a lane plan raises it to two per lane the rank serves
        source.holders.append(self)

    def __len__(self) -> int:
        return self.n

    def units(self) -> np.ndarray:
        """Where each block starts, then len(self): the units of the lane plan (data.lanes)."""
        return np.append(np.arange(0, self.n, self.block), self.n)

    def __getitem__(self, i: int):
        x, y = self.take(np.array([i]))
        return x[0], y[0]

    @property
    def held_bytes(self) -> int:
        return sum(x.nbytes + y.nbytes for x, y in self.cache.values())

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        if b in self.cache:
            self.cache.move_to_end(b)
            return self.cache[b]
        start = self.first + b * self.block
        rows = self.source.read_range(start, min(start + self.block, self.first + self.n))
        self.cache[b] = rows
        self.source.note_held(len(rows[1]))
        return rows

    def take(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        x = np.empty((len(idx), len(self.source.features)), dtype=np.float32)
        y = np.empty(len(idx), dtype=np.int64)
        with self.lock:
            blocks = idx // self.block
            needed = [int(b) for b in np.unique(blocks)]
            for old in [b for b in self.cache if b not in needed][: max(len(self.cache) + len(needed) - self.capacity, 0)]:
                del self.cache[old]  # before reading: never more than `capacity` blocks (or the ones this call needs) at once
            for b in needed:
                at = blocks == b
                bx, by = self._block(b)
                x[at], y[at] = bx[idx[at] - b * self.block], by[idx[at] - b * self.block]
        return torch.from_numpy(x), torch.from_numpy(y)


class StreamPosition:
    """Checkpoint part "stream": where the next training sample is, as (epoch, sample of the epoch) and (file, row)."""

    def __init__(self, plan: StreamPlan, data: StreamRows):
        self.plan, self.data, self.step = plan, data, 0

    def at(self, step: int) -> None:
        """Optimizer steps done: the position a checkpoint written now records."""
        self.step = step

    def _where(self, epoch: int, sample: int) -> tuple[str, int]:
        index = self.plan.order_slice(epoch, sample, sample + 1)
        return self.data.source.locate(self.data.first + int(index[0])) if len(index) else ("", -1)

    def state_dict(self) -> dict:
        epoch, k = divmod(self.step, self.plan.steps_per_epoch())
        sample = k * self.plan.global_batch
        file, row = self._where(epoch, sample)
        return {"step": self.step, "epoch": epoch, "sample": sample, "file": file, "row": row, "block_rows": self.plan.block,
                "train_rows": self.plan.n_samples}

    def load_state_dict(self, state: dict) -> None:
        here = self._where(state["epoch"], state["sample"]) if state["train_rows"] == self.plan.n_samples else None
        if state["block_rows"] != self.plan.block or here != (state["file"], state["row"]):
            raise ShoalError(f"data: the checkpoint's stream position (epoch {state['epoch']}, sample {state['sample']}: "
                             f"{state['file']} row {state['row']}, {state['train_rows']} training rows in blocks of {state['block_rows']}) "
                             f"is not where this job's stream puts it; data.path, data.limit_train or data.stream_block_rows changed "
                             f"since the checkpoint: restore them, or start a new run")
        self.step = int(state["step"])


def parts(dataset: Dataset, plan) -> dict:
    """The checkpoint parts of a data set: a stream's position; none for data sets read by index."""
    if isinstance(dataset, StreamRows) and isinstance(plan, StreamPlan):
        return {"stream": StreamPosition(plan, dataset)}
    return {}
