"""Exact quantiles of columns too large to sort in memory.

Dask's own quantiles are approximate (they merge per-partition percentiles). Here each
needed order statistic is found exactly, usually in two passes:
1. per partition: moments and the partition's own order statistics around each level;
   the smallest and largest of those bracket the global value;
2. per partition: how many values fall below the bracket, and the values inside it
   (few when partitions are alike), from which the ranks are read off.
When partitions differ a lot (sorted data), the bracket is wide and a fallback narrows an
interval instead: a pass counts the values in 16,384 equal-width bins, the bin holding
the rank becomes the interval, and a last pass gathers the few values left. Memory is a
bracket or a histogram per column. Results equal numpy/pandas quantiles with the same
method exactly (bit for bit in the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shoal.errors import ShoalError
from shoal.prep._columns import column_values
from shoal.prep.aggregates import Moments, merge_moments, partition_moments, per_partition

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
    """Values in [lo, hi] (closed) or [lo, hi), NaN dropped."""
    if closed:
        keep = (values >= lo) & (values <= hi)
    else:
        keep = (values >= lo) & (values < hi)
    return values if keep.all() else values[keep]


def _partition_histograms(part, intervals: list[tuple]) -> list[np.ndarray]:
    columns = {c: column_values(part, c) for c in {key[0] for key in intervals}}
    return [
        np.histogram(_in_interval(columns[c], lo, hi, closed), bins=BINS, range=(lo, hi))[0]
        for c, lo, hi, closed in intervals
    ]


def _partition_distinct(part, intervals: list[tuple]) -> list[tuple[np.ndarray, np.ndarray]]:
    columns = {c: column_values(part, c) for c in {key[0] for key in intervals}}
    return [np.unique(_in_interval(columns[c], lo, hi, closed), return_counts=True) for c, lo, hi, closed in intervals]


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


def _local_ranks(n: int, qs: list[float]) -> list[tuple[int, int]]:
    """Ranks around level q in a partition of n values, one wider on each side for safety."""
    return [(max(math.floor(q * (n - 1)) - 1, 0), min(math.ceil(q * (n - 1)) + 1, n - 1)) for q in qs]


def partition_brackets(part, columns: list[str], qs: list[float]) -> dict:
    """For each column and level, the partition's own values just below and above the level."""
    out = {}
    for column in columns:
        values = column_values(part, column)
        values = values[~np.isnan(values)]
        if not len(values):
            out[column] = None
            continue
        ranks = _local_ranks(len(values), qs)
        ordered = np.partition(values, sorted({r for pair in ranks for r in pair}))
        out[column] = [(float(ordered[lo]), float(ordered[hi])) for lo, hi in ranks]
    return out


def merge_brackets(parts: list[dict], columns: list[str], qs: list[float]) -> dict:
    merged = {}
    for column in columns:
        found = [p[column] for p in parts if p[column] is not None]
        if found:
            merged[column] = [(min(f[j][0] for f in found), max(f[j][1] for f in found)) for j in range(len(qs))]
    return merged


def _profile(part, columns, qs):
    return partition_moments(part, columns), partition_brackets(part, columns, qs)


def profile(frame, columns: list[str], qs: list[float]) -> tuple[Moments, dict]:
    """Pass 1: moments and brackets in one read."""
    parts = per_partition(frame[columns], _profile, columns, qs)
    return merge_moments([p[0] for p in parts]), merge_brackets([p[1] for p in parts], columns, qs)


def _few_distinct(values: np.ndarray, cap: int):
    """(distinct values, counts) when there are at most cap of them (ties are common), else None."""
    if len(values) <= cap:
        return np.unique(values, return_counts=True)
    counts = pd.Series(values).value_counts(sort=False)
    if len(counts) > cap:
        return None
    return counts.index.to_numpy(dtype=np.float64), counts.to_numpy()


def _partition_inside(part, specs: list[tuple], cap: int):
    columns = {c: column_values(part, c) for c in {spec[0] for spec in specs}}
    out = []
    for column, lo, hi in specs:
        values = columns[column]
        below = int(np.count_nonzero(values < lo))
        inside = values[(values >= lo) & (values <= hi)]
        out.append((below, len(inside), _few_distinct(inside, cap)))
    return out


def _from_brackets(frame, wanted: dict[tuple[str, int], int], brackets: dict, nparts: int) -> dict:
    """Pass 2: read ranks off the values inside the brackets; ranks it cannot place are left out."""
    specs = sorted({(c, *brackets[c][j]) for (c, _), j in wanted.items()})
    parts = per_partition(frame[sorted({s[0] for s in specs})], _partition_inside, specs, max(GATHER_LIMIT // nparts, 1000))
    found = {}
    for index, (column, lo, hi) in enumerate(specs):
        results = [p[index] for p in parts]
        if any(r[2] is None for r in results):
            continue
        below = sum(r[0] for r in results)
        values = np.concatenate([r[2][0] for r in results])
        counts = np.concatenate([r[2][1] for r in results])
        uniq, inverse = np.unique(values, return_inverse=True)
        cumulative = below + np.cumsum(np.bincount(inverse, weights=counts, minlength=len(uniq)))
        for (c, rank), j in wanted.items():
            if c == column and brackets[c][j] == (lo, hi) and below <= rank < (cumulative[-1] if len(uniq) else below):
                found[(c, rank)] = float(uniq[int(np.searchsorted(cumulative, rank, side="right"))])
    return found


def exact_quantiles(
    frame, columns: list[str], qs: list[float], method: str = "linear", summary: Moments | None = None, brackets=None
) -> dict[str, list[float]]:
    """Quantiles qs of each column, equal to numpy.quantile(values[~isnan], qs, method=method).

    summary and brackets may come from a pass the caller already made (see profile()).
    """
    if method not in METHODS:
        raise ShoalError(f"quantile method '{method}' is not one of {', '.join(METHODS)}")
    if not columns:
        return {}
    if summary is None or brackets is None:
        summary, brackets = profile(frame, columns, qs)
    index = {c: i for i, c in enumerate(summary.columns)}
    plans, wanted = {}, {}
    for column in columns:
        n = int(summary.count[index[column]])
        plans[column] = [_virtual_index(n, q, method) for q in qs] if n else None
        for j, (lo, hi, _) in enumerate(plans[column] or []):
            wanted.setdefault((column, lo), j)
            wanted.setdefault((column, hi), j)
    values = _from_brackets(frame, wanted, brackets, frame.npartitions) if wanted else {}
    missing: dict[str, list[int]] = {}
    for column, rank in wanted:
        if (column, rank) not in values:
            missing.setdefault(column, []).append(rank)
    if missing:
        values.update(order_statistics(frame, missing, summary))
    out = {}
    for column, plan in plans.items():
        if plan is None:
            out[column] = [float("nan")] * len(qs)
        else:
            out[column] = [_lerp(values[(column, lo)], values[(column, hi)], t) for lo, hi, t in plan]
    return out
