"""Integration: bring several sources into one schema (join, names, units, types, duplicates)."""

from __future__ import annotations

from typing import Literal

import dask.dataframe as dd
import numpy as np
import pandas as pd

from shoal.errors import ShoalError
from shoal.prep._columns import is_numeric
from shoal.prep.aggregates import per_partition
from shoal.prep.steps.base import Step, StepContext

# x * factor + offset
UNITS: dict[str, tuple[float, float]] = {
    "fahrenheit_to_celsius": (5 / 9, -32 * 5 / 9),
    "celsius_to_fahrenheit": (9 / 5, 32.0),
    "miles_to_km": (1.609344, 0.0),
    "km_to_miles": (1 / 1.609344, 0.0),
    "feet_to_m": (0.3048, 0.0),
    "m_to_feet": (1 / 0.3048, 0.0),
    "inches_to_mm": (25.4, 0.0),
    "mph_to_kmh": (1.609344, 0.0),
    "knots_to_kmh": (1.852, 0.0),
    "pounds_to_kg": (0.45359237, 0.0),
    "minutes_to_hours": (1 / 60, 0.0),
}

TYPES = ("float64", "float32", "int64", "Int64", "bool", "string", "datetime")


class Join(Step):
    """Join another source onto the frame by keys.

    left/inner joins broadcast the other source to every partition of the frame, so row
    order and partitions are kept (the other source must fit in a worker's memory, as
    lookup tables do); right/outer joins shuffle both sides by key.
    """

    op: Literal["join"]
    source: str
    on: list[str] | None = None
    left_on: list[str] | None = None
    right_on: list[str] | None = None
    how: Literal["left", "inner", "right", "outer"] = "left"
    suffix: str | None = None

    def apply(self, frame, params, ctx: StepContext):
        if self.source not in ctx.sources:
            raise ShoalError(f"{ctx.where}: source '{self.source}' is not defined; sources are: {', '.join(ctx.sources)}")
        other = ctx.sources[self.source]
        left, right = (self.on, self.on) if self.on else (self.left_on, self.right_on)
        if not left or not right or len(left) != len(right):
            raise ShoalError(f"{ctx.where}: give 'on', or 'left_on' and 'right_on' of equal length")
        for key in left:
            if key not in frame.columns:
                raise ShoalError(f"{ctx.where}: join key '{key}' is not a column of the frame; columns are: {', '.join(frame.columns)}")
        for key in right:
            if key not in other.columns:
                raise ShoalError(f"{ctx.where}: join key '{key}' is not a column of source '{self.source}'; columns are: {', '.join(other.columns)}")
        for lk, rk in zip(left, right):
            if is_numeric(frame.dtypes[lk]) != is_numeric(other.dtypes[rk]):
                raise ShoalError(
                    f"{ctx.where}: join key '{lk}' ({frame.dtypes[lk]}) and '{self.source}.{rk}' "
                    f"({other.dtypes[rk]}) have different types; add a cast step"
                )
        suffix = self.suffix if self.suffix is not None else f"_{self.source}"
        if self.how in ("left", "inner") and other.npartitions > 1:
            other = other.repartition(npartitions=1)  # a one-partition side is joined to each partition in place
        merged = frame.merge(other, how=self.how, left_on=left, right_on=right, suffixes=("", suffix))
        extra = [r for l, r in zip(left, right) if r != l and r in merged.columns and r not in frame.columns]
        return merged.drop(columns=extra) if extra else merged


class Rename(Step):
    """Rename columns to one schema: {old = "new"}."""

    op: Literal["rename"]
    columns: dict[str, str]

    def apply(self, frame, params, ctx: StepContext):
        self.named(frame, ctx, self.columns)
        return frame.rename(columns=self.columns)


class Cast(Step):
    """Convert column types: {col = "float64" | "int64" | "Int64" | "bool" | "string" | "datetime"}."""

    op: Literal["cast"]
    columns: dict[str, Literal[TYPES]]

    def apply(self, frame, params, ctx: StepContext):
        self.named(frame, ctx, self.columns)
        out = {}
        for column, kind in self.columns.items():
            if kind == "datetime":
                out[column] = dd.to_datetime(frame[column], utc=True)
            else:
                out[column] = frame[column].astype(kind)
        return frame.assign(**out)


class Units(Step):
    """Convert units: a named conversion (see UNITS) or x * factor + offset."""

    op: Literal["units"]
    columns: list[str]
    convert: Literal[tuple(UNITS)] | None = None
    factor: float = 1.0
    offset: float = 0.0

    def apply(self, frame, params, ctx: StepContext):
        columns = self.numeric_targets(frame, ctx, self.columns)
        factor, offset = UNITS[self.convert] if self.convert else (self.factor, self.offset)
        return frame.assign(**{c: frame[c].astype("float64") * factor + offset for c in columns})


class Derive(Step):
    """Add a column computed by a pandas expression, e.g. delayed = "arr_delay > 15"."""

    op: Literal["derive"]
    column: str
    expr: str

    def apply(self, frame, params, ctx: StepContext):
        try:
            values = frame.eval(self.expr)
        except Exception as exc:  # pandas names the unknown column or the syntax error
            raise ShoalError(f"{ctx.where}: cannot evaluate expr '{self.expr}': {str(exc).splitlines()[0]}") from None
        return frame.assign(**{self.column: values})


def _same(part: pd.DataFrame) -> pd.DataFrame:
    return part


def _row_hashes(part: pd.DataFrame, subset: list[str]) -> np.ndarray:
    return pd.util.hash_pandas_object(part[subset], index=False).to_numpy()


def _candidates(part: pd.DataFrame, subset: list[str], suspects: np.ndarray, number: int) -> pd.DataFrame:
    hashes = _row_hashes(part, subset)
    rows = part[subset][np.isin(hashes, suspects)]
    return rows.assign(__part=number, __pos=np.flatnonzero(np.isin(hashes, suspects)))


def _drop_positions(part: pd.DataFrame, positions: dict, partition_info=None) -> pd.DataFrame:
    drop = positions.get(partition_info["number"] if partition_info else 0, [])
    if not len(drop):
        return part
    keep = np.ones(len(part), dtype=bool)
    keep[drop] = False
    return part[keep]


class DropDuplicates(Step):
    """Drop repeated rows (all columns or a subset), keeping the first, in place and in order.

    Exact and out of core: one pass hashes the rows; only rows whose hash repeats are
    gathered and compared by value; a second pass drops them. Row order and partitions
    are kept, so results do not depend on the partitioning.
    """

    op: Literal["drop_duplicates"]
    subset: list[str] | None = None

    def apply(self, frame, params, ctx: StepContext):
        subset = self.named(frame, ctx, self.subset) if self.subset else list(frame.columns)
        # Pin the partitioning: without this, dask may fuse Parquet partitions differently in
        # the hashing pass (few columns) and the final graph, and positions would not line up.
        frame = frame.map_partitions(_same, meta=frame._meta)
        hashes = np.concatenate(per_partition(frame, _row_hashes, subset) or [np.empty(0, np.uint64)])
        uniq, counts = np.unique(hashes, return_counts=True)
        suspects = uniq[counts > 1]
        if not len(suspects):
            return frame
        parts = frame.to_delayed()
        import dask

        task = dask.delayed(_candidates, pure=True)
        found = pd.concat(dask.compute(*[task(p, subset, suspects, i) for i, p in enumerate(parts)]))
        found = found.sort_values(["__part", "__pos"], kind="stable")
        repeated = found[found.duplicated(subset=subset, keep="first")]
        positions = {int(k): g["__pos"].to_numpy() for k, g in repeated.groupby("__part")}
        return frame.map_partitions(_drop_positions, positions, meta=frame._meta)
