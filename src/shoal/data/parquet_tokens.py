"""Parquet token data (list columns `input_ids`, `attention_mask`, `labels`, ...) read per rank, as dict batches.

The Parquet side of `batches.DictDataset`: the same seeded train/eval split and the same targets (classification
labels, or next-token targets for `task = "lm"`), but a rank holds only the rows its plan deals it in the epoch
(`hold`, as `RankRows` does for feature columns: row group by row group, token ids kept as int64). Rows of different
lengths are padded on the right to the longest of each batch (attention mask 0, targets -100), so padding never counts;
a row longer than the length the model was built for (the longest row of the first row group, or `model.kwargs`) is
refused with one line naming it.
"""

from __future__ import annotations

import numpy as np
import torch

from shoal.data.batches import IGNORE, lm_targets, pad
from shoal.data.parquet_rows import ParquetSource, RankRows
from shoal.errors import ShoalError


class TokenRows(RankRows):
    """Samples `rows[i]` of token Parquet files; `take` gives `({column: (batch, longest) int64}, target)`."""

    dict_inputs = True

    def __init__(self, source: ParquetSource, rows: np.ndarray, columns: list[str], task: str, seq_len: int):
        super().__init__(source, rows)
        self.names, self.task, self.seq_len = columns, task, seq_len
        self.cols: dict[str, np.ndarray] = {c: np.empty(0, dtype=object) for c in columns}
        self._bytes = 0

    @property
    def held_bytes(self) -> int:
        return self._bytes + self.held.nbytes

    def _read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The columns of the given sorted global rows, decoding only the row groups holding some."""
        out = {c: np.empty(len(rows), dtype=object) for c in self.names}
        bounds = np.searchsorted(rows, self.source.starts)
        with self.source.lock:
            for g in np.flatnonzero(np.diff(bounds)):
                lo, hi = bounds[g], bounds[g + 1]
                cols = self.source._decode(int(g), self.names)
                local = rows[lo:hi] - self.source.starts[g]
                for c in self.names:
                    out[c][lo:hi] = list(cols[c][local])
        return out

    def hold(self, indices: np.ndarray) -> None:
        wanted = np.unique(self.rows[np.asarray(indices, dtype=np.int64)])
        with self.lock:
            if np.array_equal(wanted, self.held):
                return
            self.held, self.cols, self._bytes = self.held[:0], {c: v[:0] for c, v in self.cols.items()}, 0
            cols = self._read(wanted)
            self.held, self.cols = wanted, cols
            self._bytes = sum(np.asarray(v).nbytes for col in cols.values() for v in col)
            self.source.note_held(len(wanted))

    def take(self, indices: np.ndarray):
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        with self.lock:
            pos = np.searchsorted(self.held, rows)
            inside = pos < len(self.held)
            inside[inside] = self.held[pos[inside]] == rows[inside]
            cols = {c: np.empty(len(rows), dtype=object) for c in self.names}
            for c in self.names:
                cols[c][inside] = self.cols[c][pos[inside]]
        if not inside.all():
            missing, back = np.unique(rows[~inside], return_inverse=True)
            read = self._read(missing)
            for c in self.names:
                cols[c][~inside] = read[c][back]
            with self.source.lock:
                self.source.stats.on_demand_rows += len(missing)
        return self._batch(cols, rows)

    def _batch(self, cols: dict[str, np.ndarray], rows: np.ndarray):
        lengths = np.array([len(r) for r in cols["input_ids"]], dtype=np.int64)
        if len(lengths) and lengths.max() > self.seq_len:
            at = int(rows[int(lengths.argmax())])
            file, row = self.source.locate(at)
            raise ShoalError(f"{self.source.where}: row {row} of '{file}' holds {lengths.max()} tokens, more than the {self.seq_len} "
                             "the model was built for (the longest row of the first row group); pad the rows to one length when "
                             "writing the file, or use data.read = 'all'")
        x: dict[str, torch.Tensor] = {}
        for c in self.names:
            if len(cols[c]) and np.ndim(cols[c][0]) >= 1:
                x[c] = torch.as_tensor(pad(list(cols[c]), IGNORE if c == "labels" else 0))
            else:
                x[c] = torch.as_tensor(np.asarray(list(cols[c]), dtype=np.int64))
        longest = x["input_ids"].shape[1] if x["input_ids"].dim() > 1 else 0
        if "attention_mask" not in x and len(lengths) and (lengths != longest).any():
            x["attention_mask"] = (torch.arange(longest)[None, :] < torch.as_tensor(lengths)[:, None]).long()
        if self.task != "lm":
            return x, x["labels"]
        labels = x.get("labels")
        if labels is None:
            labels = x["input_ids"].clone()
            if "attention_mask" in x:
                labels[x["attention_mask"] == 0] = IGNORE
            x["labels"] = labels
        return x, lm_targets(labels)

    def __getitem__(self, i: int):
        x, y = self.take(np.array([i]))
        return {k: v[0] for k, v in x.items()}, y[0]


def column_range(source: ParquetSource, column: str) -> tuple[int, int] | None:
    """(min, max) of an integer column (a list column's values) from the files' statistics; None where any group lacks them."""
    low = high = None
    for fi, g in source.groups:
        meta = source._handles[fi].metadata.row_group(g)
        col = next((meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema.split(".")[0] == column), None)
        st = col.statistics if col is not None else None
        if st is None or not st.has_min_max or st.physical_type not in ("INT32", "INT64"):
            return None
        low, high = st.min if low is None else min(low, st.min), st.max if high is None else max(high, st.max)
    return (int(low), int(high)) if low is not None else None
