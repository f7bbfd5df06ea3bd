"""Exact aggregates over a Dask dataframe, one streaming pass each.

Each function maps a small numpy summary over the partitions and merges the summaries
on the client, so memory holds a few partitions at a time, never the whole data.
Means and variances are merged with Chan's pairwise update (numerically stable, the
same result as a single pass up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import numpy as np
import pandas as pd

from shoal.prep._columns import as_float, column_values


def lazy_per_partition(frame, function, *args) -> list:
    """function(partition, *args) for every partition, as delayed results (to compute with others)."""
    task = dask.delayed(function, pure=True)
    return [task(part, *args) for part in frame.to_delayed()]


def per_partition(frame, function, *args) -> list:
    """Run function(partition, *args) on every partition and return the results in order."""
    return list(dask.compute(*lazy_per_partition(frame, function, *args)))


@dataclass
class Moments:
    """Count, extremes, mean and sum of squared deviations of each column (NaN skipped)."""

    columns: list[str]
    count: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    rows: int

    def variance(self, ddof: int) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > ddof, self.m2 / (self.count - ddof), np.nan)

    def merge(self, other: Moments) -> Moments:
        n = self.count + other.count
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = other.mean - self.mean
            mean = np.where(n > 0, self.mean + delta * other.count / np.maximum(n, 1), np.nan)
            m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / np.maximum(n, 1)
        mean = np.where(self.count == 0, other.mean, np.where(other.count == 0, self.mean, mean))
        m2 = np.where(self.count == 0, other.m2, np.where(other.count == 0, self.m2, m2))
        return Moments(
            self.columns,
            n,
            np.fmin(self.minimum, other.minimum),
            np.fmax(self.maximum, other.maximum),
            mean,
            m2,
            self.rows + other.rows,
        )


def partition_moments(part: pd.DataFrame, columns: list[str]) -> Moments:
    k = len(columns)
    count, mean, m2 = np.zeros(k, np.int64), np.full(k, np.nan), np.zeros(k)
    minimum, maximum = np.full(k, np.nan), np.full(k, np.nan)
    for i, column in enumerate(columns):
        values = column_values(part, column)
        missing = np.isnan(values)
        if missing.any():
            values = values[~missing]
        if not len(values):
            continue
        count[i] = len(values)
        mean[i] = values.sum() / len(values)
        deviation = values - mean[i]
        m2[i] = deviation @ deviation
        minimum[i], maximum[i] = values.min(), values.max()
    return Moments(columns, count, minimum, maximum, mean, m2, len(part))


def merge_moments(parts: list[Moments]) -> Moments:
    total = parts[0]
    for part in parts[1:]:
        total = total.merge(part)
    return total


def lazy_moments(frame, columns: list[str]):
    """A delayed Moments, so a caller can compute it in the same pass as other aggregates."""
    return dask.delayed(merge_moments)(lazy_per_partition(frame[columns], partition_moments, columns))


def moments(frame, columns: list[str]) -> Moments:
    """Exact count/min/max/mean/M2 of numeric columns in one pass."""
    return lazy_moments(frame, columns).compute()


def _partition_scatter(part: pd.DataFrame, columns: list[str]):
    values = as_float(part, columns)
    missing = int(np.isnan(values).sum())
    values = values[~np.isnan(values).any(axis=1)]
    n = len(values)
    mean = values.mean(axis=0) if n else np.zeros(len(columns))
    centered = values - mean
    return n, mean, centered.T @ centered, missing


def covariance(frame, columns: list[str]):
    """Exact mean vector and covariance matrix (ddof=1) plus the count of missing cells."""
    parts = per_partition(frame[columns], _partition_scatter, columns)
    n, mean, scatter, missing = 0, np.zeros(len(columns)), np.zeros((len(columns),) * 2), 0
    for pn, pmean, pscatter, pmissing in parts:
        missing += pmissing
        if pn == 0:
            continue
        total = n + pn
        delta = pmean - mean
        scatter = scatter + pscatter + np.outer(delta, delta) * n * pn / total
        mean = mean + delta * pn / total
        n = total
    cov = scatter / (n - 1) if n > 1 else np.full_like(scatter, np.nan)
    return n, mean, cov, missing


def value_counts(frame, column: str) -> pd.Series:
    """Exact counts of each distinct non-missing value (a distributed groupby)."""
    return frame[column].value_counts(dropna=True).compute()


def mode_of(counts: pd.Series):
    """The most frequent value; ties go to the smallest, as pandas' Series.mode() does."""
    if counts.empty:
        return None
    top = counts[counts == counts.max()].index
    return _plain(sorted(top)[0])


def partition_distinct(part: pd.DataFrame, columns: list[str]) -> dict:
    """Each column's distinct non-missing values in this partition (hash-based, order kept)."""
    return {c: part[c].dropna().unique() for c in columns}


def merge_distinct(parts: list[dict]) -> dict[str, int]:
    """Exact distinct counts from per-partition distinct values (memory: the distinct values)."""
    if not parts:
        return {}
    return {c: pd.concat([pd.Series(p[c]) for p in parts], ignore_index=True).nunique() for c in parts[0]}


def distinct_counts(frame, columns: list[str]) -> dict[str, int]:
    """Exact number of distinct non-missing values per column (memory grows with distinct values)."""
    results = dask.compute(*[frame[c].nunique(dropna=True) for c in columns])
    return {c: int(r) for c, r in zip(columns, results)}


def _plain(value):
    """numpy scalars -> Python scalars, so parameters serialize to JSON unchanged."""
    return value.item() if hasattr(value, "item") else value


class _quiet:
    """Silence numpy's all-NaN warnings: all-missing columns are reported, not warned about."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
