"""Exact quantiles of columns too large to sort in memory.

Dask's own quantiles are approximate (they merge per-partition percentiles). Here each
needed order statistic is found exactly by narrowing an interval: one pass counts the
values in 16,384 equal-width bins of the interval, the bin holding the wanted rank becomes
the new interval, and once few values remain, one last pass gathers their distinct values
with counts. Usually three passes over the data (extremes, histogram, gather) whatever
its size; memory is a histogram per column. The results equal numpy/pandas quantiles with
the same method bit for bit up to the final interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shoal.errors import ShoalError
from shoal.prep._columns import as_float
from shoal.prep.aggregates import Moments, moments, per_partition

BINS = 16_384
GATHER_LIMIT = 200_000
METHODS = ("linear", "inverted_cdf", "averaged_inverted_cdf")


def _virtual_index(n: int, q: float, method: str) -> tuple[int, int, float]:
    """The two order statistics numpy's quantile(method) interpolates between, and the weight."""
    q_arr = np.asarray(q, dtype=np.float64)
    if method == "linear":
        virtual = (n - 1) * q_arr
    else:
        virtual = n * q_arr - 1
    previous = float(np.floor(virtual))
    gamma = float(virtual - previous)
    if method == "inverted_cdf":
        previous, gamma = (previous if gamma == 0 else previous + 1), 0.0
    elif method == "averaged_inverted_cdf":
        gamma = 0.5 if gamma == 0 else 1.0
    if virtual >= n - 1:
        return n - 1, n - 1, 0.0
    if virtual < 0 or previous < 0:
        return 0, 0, 0.0
    lo = int(previous)
    return lo, min(lo + 1, n - 1), gamma


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's interpolation, term for term, so results match it exactly."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


@dataclass
class _Search:
    """Where the value of one rank of one column may still lie: [lo, hi] or [lo, hi)."""

    column: str
    rank: int
    lo: float
    hi: float
    closed: bool
    below: int
    inside: int

    @property
    def key(self):
        return (self.column, self.lo, self.hi, self.closed)

    def splittable(self) -> bool:
        scale = max(abs(self.lo), abs(self.hi))
        return self.hi - self.lo > 8 * BINS * np.spacing(scale) and self.inside > GATHER_LIMIT


def _in_interval(values: np.ndarray, lo: float, hi: float, closed: bool) -> np.ndarray:
    upper = values <= hi if closed else values < hi
    return values[(values >= lo) & upper]


def _partition_histograms(part, intervals: list[tuple]) -> list[np.ndarray]:
    columns = sorted({key[0] for key in intervals})
    matrix = as_float(part, columns)
    out = []
    for column, lo, hi, closed in intervals:
        values = _in_interval(matrix[:, columns.index(column)], lo, hi, closed)
        out.append(np.histogram(values, bins=BINS, range=(lo, hi))[0])
    return out


def _partition_distinct(part, intervals: list[tuple]) -> list[tuple[np.ndarray, np.ndarray]]:
    columns = sorted({key[0] for key in intervals})
    matrix = as_float(part, columns)
    return [
        np.unique(_in_interval(matrix[:, columns.index(c)], lo, hi, closed), return_counts=True)
        for c, lo, hi, closed in intervals
    ]


def _narrow(frame, searches: list[_Search]) -> None:
    """One histogram pass shared by all searches that still hold too many values."""
    keys = sorted({s.key for s in searches})
    totals = [sum(h) for h in zip(*per_partition(frame, _partition_histograms, keys))]
    by_key = dict(zip(keys, totals))
    for s in searches:
        counts = by_key[s.key]
        edges = np.linspace(s.lo, s.hi, BINS + 1)
        cumulative = s.below + np.cumsum(counts)
        j = int(np.searchsorted(cumulative, s.rank, side="right"))
        s.below = int(cumulative[j - 1]) if j else s.below
        s.inside = int(counts[j])
        s.lo, s.hi = float(edges[j]), float(edges[j + 1])
        s.closed = s.closed and j == BINS - 1 or (s.lo == s.hi)


def _resolve(frame, searches: list[_Search]) -> dict[tuple[str, int], float]:
    """Last pass: gather the distinct values left in each interval and read off the rank."""
    keys = sorted({s.key for s in searches})
    per_part = per_partition(frame, _partition_distinct, keys)
    merged = {}
    for index, key in enumerate(keys):
        values = np.concatenate([p[index][0] for p in per_part])
        counts = np.concatenate([p[index][1] for p in per_part])
        uniq, inverse = np.unique(values, return_inverse=True)
        merged[key] = (uniq, np.bincount(inverse, weights=counts, minlength=len(uniq)))
    found = {}
    for s in searches:
        uniq, counts = merged[s.key]
        cumulative = s.below + np.cumsum(counts)
        found[(s.column, s.rank)] = float(uniq[int(np.searchsorted(cumulative, s.rank, side="right"))])
    return found


def order_statistics(frame, ranks: dict[str, list[int]], summary: Moments) -> dict[tuple[str, int], float]:
    """The exact k-th smallest non-missing value (0-based) for each requested (column, k)."""
    index = {c: i for i, c in enumerate(summary.columns)}
    searches = []
    for column, wanted in ranks.items():
        i = index[column]
        lo, hi = float(summary.minimum[i]), float(summary.maximum[i])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ShoalError(f"column '{column}' holds infinite values: clip or drop them before quantiles")
        for rank in sorted(set(wanted)):
            searches.append(_Search(column, rank, lo, hi, True, 0, int(summary.count[i])))
    if not searches:
        return {}
    columns = sorted(ranks)
    frame = frame[columns]
    for _ in range(8):
        active = [s for s in searches if s.splittable()]
        if not active:
            break
        _narrow(frame, active)
    return _resolve(frame, searches)


def exact_quantiles(
    frame, columns: list[str], qs: list[float], method: str = "linear", summary: Moments | None = None
) -> dict[str, list[float]]:
    """Quantiles qs of each column, equal to numpy.quantile(values[~isnan], qs, method=method)."""
    if method not in METHODS:
        raise ShoalError(f"quantile method '{method}' is not one of {', '.join(METHODS)}")
    if not columns:
        return {}
    summary = summary if summary is not None else moments(frame, columns)
    index = {c: i for i, c in enumerate(summary.columns)}
    plans, ranks = {}, {}
    for column in columns:
        n = int(summary.count[index[column]])
        if n == 0:
            plans[column] = None
            continue
        plans[column] = [_virtual_index(n, q, method) for q in qs]
        ranks[column] = [r for lo, hi, _ in plans[column] for r in (lo, hi)]
    values = order_statistics(frame, ranks, summary)
    out = {}
    for column, plan in plans.items():
        if plan is None:
            out[column] = [float("nan")] * len(qs)
        else:
            out[column] = [_lerp(values[(column, lo)], values[(column, hi)], t) for lo, hi, t in plan]
    return out
