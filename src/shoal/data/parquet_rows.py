"""Parquet rows read by row group, for the rows a rank uses only (`data.read = "rank"`).

Every rank used to load every row and then pick its samples. Here a data set knows which file
row each of its samples is (the seeded train/eval split as before, so the samples and their
order are exactly those of `data.read = "all"`), and `hold(indices)` reads just those rows: row
group by row group (skipping groups with none of them), keeping the wanted rows and dropping the
rest, so a rank's data memory is 1/N of the data plus one row group while reading. The trainer
holds each epoch's share of the batch plan (docs/data.md); a sample not held is read on demand.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from shoal.errors import ShoalError


@dataclass
class ReadStats:
    """What a rank read: rows taken into memory by `hold`, rows read on demand (samples not held: a first sample to check
    shapes), row groups decoded (and which, and their bytes on disk), and the most bytes its data sets held at once."""

    rows_read: int = 0
    groups_read: int = 0
    peak_bytes: int = 0
    on_demand_rows: int = 0
    bytes_read: int = 0
    groups: set = field(default_factory=set)

    def forget_checks(self) -> None:
        """Drop what scans before training decoded (label ranges, first rows): not what training reads."""
        self.groups_read = self.bytes_read = 0
        self.groups.clear()

    def as_record(self) -> dict:
        return {"rows_read": self.rows_read, "row_groups_read": self.groups_read, "peak_bytes": self.peak_bytes,
                "on_demand_rows": self.on_demand_rows, "bytes_read": self.bytes_read, "distinct_row_groups": len(self.groups)}


@dataclass
class ParquetSource:
    """The files in order, their row groups' global row ranges, and how to read any rows' features and label."""

    files: list[Path]
    features: list[str]
    label: str
    where: str  # names the data in messages: "data.path 'x'"
    stats: ReadStats = field(default_factory=ReadStats)

    def __post_init__(self):
        import pyarrow.parquet as pq

        self._handles = [pq.ParquetFile(f) for f in self.files]
        groups, offset = [], 0
        for fi, handle in enumerate(self._handles):
            for g in range(handle.metadata.num_row_groups):
                groups.append((fi, g))
                offset += handle.metadata.row_group(g).num_rows
        self.groups = groups
        self.starts = np.zeros(len(groups) + 1, dtype=np.int64)
        if groups:
            self.starts[1:] = np.cumsum([self._handles[fi].metadata.row_group(g).num_rows for fi, g in groups])
        self.n_rows = int(offset)
        self.file_starts = np.cumsum([0] + [h.metadata.num_rows for h in self._handles])
        self.holders: list[RankRows] = []  # the data sets holding rows of this source: their bytes add up to the rank's
        self.lock = threading.Lock()  # the prefetch thread and the loop may read at once; a ParquetFile is not shared safely

    def _decode(self, group: int, column_names: list[str]) -> dict[str, np.ndarray]:
        fi, g = self.groups[group]
        try:
            table = self._handles[fi].read_row_group(g, columns=column_names)
        except Exception as err:
            raise ShoalError(f"{self.where}: cannot read row group {g} of '{self.files[fi]}' ({_one_line(err)}); write the file again") from None
        self.stats.groups_read += 1
        self.stats.groups.add(group)
        meta = self._handles[fi].metadata.row_group(g)
        self.stats.bytes_read += sum(meta.column(i).total_compressed_size for i in range(meta.num_columns)
                                     if meta.column(i).path_in_schema in column_names)
        return {c: table.column(c).to_numpy() for c in column_names}

    def _features(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """As `data.read = "all"` builds them: float32, one column per feature (nulls become NaN)."""
        return np.column_stack([cols[c].astype(np.float32) for c in self.features]) if self.features else np.zeros((0, 0), np.float32)

    def read_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of the given global rows (sorted, distinct), in that order; only groups holding some are decoded."""
        n = len(rows)
        x = np.empty((n, len(self.features)), dtype=np.float32)
        y = np.empty(n, dtype=np.int64)
        if n == 0:
            return x, y
        bounds = np.searchsorted(rows, self.starts)  # rows[bounds[g]:bounds[g+1]] fall in group g
        with self.lock:
            for g in np.flatnonzero(np.diff(bounds)):
                lo, hi = bounds[g], bounds[g + 1]
                cols = self._decode(int(g), [*self.features, self.label])
                local = rows[lo:hi] - self.starts[g]
                x[lo:hi] = self._features(cols)[local]
                y[lo:hi] = labels_as_codes(cols[self.label][local], self.where, self.label)
        return x, y

    def read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of the consecutive global rows [start, stop)."""
        return self.read_rows(np.arange(start, stop, dtype=np.int64))

    def label_range(self, rows: np.ndarray | None = None) -> tuple[int, int]:
        """(smallest, largest) label of the given sorted global rows (None: all), from the files' column statistics where
        they hold integer labels (nothing decoded), else read group by group from the label column alone; a bad label
        fails with one line."""
        known = self._label_statistics() if rows is None else None
        if known is not None:
            return known
        low, high = None, None
        bounds = np.searchsorted(rows, self.starts) if rows is not None else None
        with self.lock:
            for g in range(len(self.groups)):
                if bounds is not None and bounds[g] == bounds[g + 1]:
                    continue
                y = self._decode(g, [self.label])[self.label]
                if bounds is not None:
                    y = y[rows[bounds[g]:bounds[g + 1]] - self.starts[g]]
                y = labels_as_codes(y, self.where, self.label)
                if len(y):
                    low = int(y.min()) if low is None else min(low, int(y.min()))
                    high = int(y.max()) if high is None else max(high, int(y.max()))
        self.stats.forget_checks()
        return (low or 0, high if high is not None else -1)

    def _label_statistics(self) -> tuple[int, int] | None:
        """(min, max) of an integer label column from every row group's statistics; None where any group lacks them."""
        low, high = None, None
        for fi, g in self.groups:
            meta = self._handles[fi].metadata.row_group(g)
            col = next((meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == self.label), None)
            st = col.statistics if col is not None else None
            if st is None or not st.has_min_max or st.physical_type not in ("INT32", "INT64") or st.null_count:
                return None
            if st.min < 0:
                raise ShoalError(f"{self.where}: label column '{self.label}' holds the label {st.min}; labels must be class codes 0..C-1")
            low, high = st.min if low is None else min(low, st.min), st.max if high is None else max(high, st.max)
        return (int(low), int(high)) if low is not None else None

    def locate(self, row: int) -> tuple[str, int]:
        """(file name, row in that file) of a global row: a stream's position, readable by a person."""
        fi = int(np.searchsorted(self.file_starts, row, side="right")) - 1
        return self.files[fi].name, int(row) - int(self.file_starts[fi])

    def note_held(self, rows: int) -> None:
        """`rows` more rows taken into memory; the data sets' bytes now (the loop and the prefetch thread both call this)."""
        with self.lock:
            self.stats.rows_read += rows
            self.stats.peak_bytes = max(self.stats.peak_bytes, sum(h.held_bytes for h in self.holders))


def labels_as_codes(y: np.ndarray, where: str, label: str) -> np.ndarray:
    """The label checks of `check_arrays` on one row group: integer class codes, none missing or negative."""
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise ShoalError(f"{where}: label column '{label}' holds the non-integer label {y[bad][0]}; labels must be integer class codes 0..C-1")
    elif y.dtype.kind not in "biu":
        raise ShoalError(f"{where}: label column '{label}' holds {y.dtype} values; labels must be integer class codes 0..C-1")
    if len(y) and y.min() < 0:
        raise ShoalError(f"{where}: label column '{label}' holds the label {y.min():.0f}; labels must be class codes 0..C-1")
    return y.astype(np.int64)


class RankRows(Dataset):
    """Samples `rows[i]` of a ParquetSource; `hold(indices)` keeps those samples in memory, the rest are read on demand."""

    def __init__(self, source: ParquetSource, rows: np.ndarray):
        self.source, self.rows = source, np.asarray(rows, dtype=np.int64)
        self.held = np.zeros(0, dtype=np.int64)  # sorted global rows in memory
        self.x = np.zeros((0, len(source.features)), dtype=np.float32)
        self.y = np.zeros(0, dtype=np.int64)
        self.lock = threading.Lock()
        source.holders.append(self)

    def __len__(self) -> int:
        return len(self.rows)

    def units(self) -> np.ndarray | None:
        """Where each row group's samples start, then len(self) (None unless the rows are in file order: data.lanes)."""
        if len(self.rows) > 1 and (np.diff(self.rows) <= 0).any():
            return None
        return np.searchsorted(self.rows, self.source.starts)

    def __getitem__(self, i: int):
        x, y = self.take(np.array([i]))
        return x[0], y[0]

    @property
    def held_bytes(self) -> int:
        return self.x.nbytes + self.y.nbytes + self.held.nbytes

    def hold(self, indices: np.ndarray) -> None:
        """Keep exactly these samples in memory (the previous ones are dropped first, so memory never holds both)."""
        wanted = np.unique(self.rows[np.asarray(indices, dtype=np.int64)])
        with self.lock:
            if np.array_equal(wanted, self.held):
                return
            self.held, self.x, self.y = self.held[:0], self.x[:0], self.y[:0]
            x, y = self.source.read_rows(wanted)
            self.held, self.x, self.y = wanted, x, y
            self.source.note_held(len(wanted))

    def take(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        with self.lock:
            pos = np.searchsorted(self.held, rows)
            inside = pos < len(self.held)
            inside[inside] = self.held[pos[inside]] == rows[inside]
            x = np.empty((len(rows), self.x.shape[1]), dtype=np.float32)
            y = np.empty(len(rows), dtype=np.int64)
            x[inside], y[inside] = self.x[pos[inside]], self.y[pos[inside]]
        if not inside.all():
            missing, back = np.unique(rows[~inside], return_inverse=True)
            mx, my = self.source.read_rows(missing)
            x[~inside], y[~inside] = mx[back], my[back]
            with self.source.lock:
                self.source.stats.on_demand_rows += len(missing)
        return torch.from_numpy(x), torch.from_numpy(y)


class EpochShare:
    """Keeps a rank-local Parquet training set holding this rank's samples of the epoch being read (once per epoch)."""

    def __init__(self, dataset: Dataset, plan, rank: int):
        self.dataset, self.plan, self.rank = dataset, plan, rank
        self.key: tuple | None = None
        lanes = getattr(plan, "lanes", 0) // max(getattr(plan, "world", 1), 1)
        if lanes and hasattr(dataset, "capacity"):  # a stream serving `lanes` lanes: two blocks of each at once
            dataset.capacity = 2 * lanes

    def ready(self, epoch: int, shares: list[int] | None) -> None:
        from shoal.data.plan import rank_epoch

        key = (epoch, tuple(shares) if shares else None)
        if isinstance(self.dataset, RankRows) and key != self.key:
            self.dataset.hold(rank_epoch(self.plan, epoch, self.rank, shares))
            self.key = key


def hold(dataset: Dataset | None, indices) -> None:
    """Before a data set is read: for rank-local Parquet rows, keep `indices()` (called only then) in memory."""
    if isinstance(dataset, RankRows):
        dataset.hold(indices())


def read_stats(dataset: Dataset | None) -> dict | None:
    """What this rank read of a Parquet data set (None for data sets held whole)."""
    source = getattr(dataset, "source", None)
    return source.stats.as_record() if isinstance(source, ParquetSource) else None


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[-1].strip() if lines else type(err).__name__
