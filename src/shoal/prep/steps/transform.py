"""Transformation: scale, bin and encode columns with fitted parameters (sklearn's conventions)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import model_validator

from shoal.errors import ShoalError
from shoal.prep.aggregates import moments
from shoal.prep.quantiles import METHODS, exact_quantiles, profile
from shoal.prep.steps.base import Step, StepContext

_TINY = 10 * np.finfo(np.float64).eps


class Standardize(Step):
    """(x - mean) / std with the population std (ddof=0); a constant column gets scale 1, as StandardScaler."""

    op: Literal["standardize"]
    columns: list[str] | None = None

    def fit(self, frame, ctx: StepContext) -> dict:
        columns = self.numeric_targets(frame, ctx, self.columns)
        summary = moments(frame, columns)
        std = np.sqrt(summary.variance(ddof=0))
        scale = np.where(std < _TINY, 1.0, std)
        return {c: [float(m), float(s)] for c, m, s in zip(columns, summary.mean, scale)}

    def apply(self, frame, params: dict, ctx: StepContext):
        self.named(frame, ctx, params)
        return frame.assign(**{c: (frame[c].astype("float64") - m) / s for c, (m, s) in params.items()})


class MinMax(Step):
    """Scale to feature_range by the fitted min and max, as MinMaxScaler (x * scale + shift)."""

    op: Literal["minmax"]
    columns: list[str] | None = None
    feature_range: tuple[float, float] = (0.0, 1.0)

    def fit(self, frame, ctx: StepContext) -> dict:
        columns = self.numeric_targets(frame, ctx, self.columns)
        summary = moments(frame, columns)
        span = summary.maximum - summary.minimum
        span = np.where(span < _TINY, 1.0, span)
        lo, hi = self.feature_range
        scale = (hi - lo) / span
        shift = lo - summary.minimum * scale
        return {c: [float(a), float(b)] for c, a, b in zip(columns, scale, shift)}

    def apply(self, frame, params: dict, ctx: StepContext):
        self.named(frame, ctx, params)
        return frame.assign(**{c: frame[c].astype("float64") * a + b for c, (a, b) in params.items()})


def _bin(values: pd.Series, inner_edges: np.ndarray) -> pd.Series:
    out = np.searchsorted(inner_edges, values.to_numpy(dtype="float64", na_value=np.nan), side="right").astype("float64")
    out[values.isna().to_numpy()] = np.nan
    return pd.Series(out, index=values.index, name=values.name)


class Discretize(Step):
    """Replace values by their bin number (0..bins-1, float) with equal-width or quantile edges.

    As sklearn's KBinsDiscretizer(encode="ordinal"): quantile edges use quantile_method
    (sklearn's default averaged_inverted_cdf), bins narrower than 1e-8 are merged, a
    constant column falls in one bin, missing values stay missing.
    """

    op: Literal["discretize"]
    columns: list[str] | None = None
    bins: int = 5
    strategy: Literal["uniform", "quantile"] = "quantile"
    quantile_method: Literal[METHODS] = "averaged_inverted_cdf"

    @model_validator(mode="after")
    def _two_bins(self):
        if self.bins < 2:
            raise ValueError("bins must be >= 2")
        return self

    def fit(self, frame, ctx: StepContext) -> dict:
        columns = self.numeric_targets(frame, ctx, self.columns)
        if self.strategy == "quantile":
            levels = list(np.linspace(0, 100, self.bins + 1) / 100)
            summary, brackets = profile(frame, columns, levels)
            edges = exact_quantiles(frame, columns, levels, self.quantile_method, summary, brackets)
        else:
            summary = moments(frame, columns)
            edges = {c: list(np.linspace(lo, hi, self.bins + 1)) for c, lo, hi in zip(columns, summary.minimum, summary.maximum)}
        fitted = {}
        for i, c in enumerate(columns):
            e = np.asarray(edges[c], dtype=np.float64)
            if summary.count[i] == 0 or summary.minimum[i] == summary.maximum[i]:
                e = np.array([-np.inf, np.inf])
            elif self.strategy == "quantile":
                e = e[np.ediff1d(e, to_begin=np.inf) > 1e-8]
            fitted[c] = e.tolist()
        return fitted

    def apply(self, frame, params: dict, ctx: StepContext):
        self.named(frame, ctx, params)
        out = {}
        for c, edges in params.items():
            inner = np.asarray(edges[1:-1], dtype=np.float64)
            out[c] = frame[c].map_partitions(_bin, inner, meta=(c, "float64"))
        return frame.assign(**out)


def _categories(frame, columns: list[str], ctx: StepContext, limit: int | None) -> dict[str, list]:
    import dask

    self_uniques = dask.compute(*[frame[c].dropna().drop_duplicates() for c in columns])
    found = {}
    for c, values in zip(columns, self_uniques):
        values = sorted(v.item() if hasattr(v, "item") else v for v in values)
        if limit is not None and len(values) > limit:
            raise ShoalError(
                f"{ctx.where}: column '{c}' has {len(values)} categories, more than max_categories = {limit}; "
                "generalize it first or raise max_categories"
            )
        found[c] = values
    return found


def _one_hot(part: pd.DataFrame, categories: dict[str, list]) -> pd.DataFrame:
    new = {}
    for c, values in categories.items():
        column = part[c]
        for v in values:
            new[f"{c}_{v}"] = (column == v).fillna(False).astype("uint8")
    return part.drop(columns=list(categories)).assign(**new)


class OneHot(Step):
    """One 0/1 column per fitted category, named COLUMN_VALUE; unknown or missing values give all zeros."""

    op: Literal["onehot"]
    columns: list[str]
    max_categories: int = 100

    def fit(self, frame, ctx: StepContext) -> dict:
        return _categories(frame, self.named(frame, ctx, self.columns), ctx, self.max_categories)

    def apply(self, frame, params: dict, ctx: StepContext):
        self.named(frame, ctx, params)
        return frame.map_partitions(_one_hot, params, meta=_one_hot(frame._meta, params))


def _ordinal(values: pd.Series, categories: list) -> pd.Series:
    codes = pd.Series(range(len(categories)), index=pd.Index(categories, dtype=object), dtype="int64")
    return values.astype(object).map(codes).fillna(-1).astype("int64")


class Ordinal(Step):
    """Integer codes 0..C-1 in sorted order (or the order given); unknown or missing values get -1."""

    op: Literal["ordinal"]
    columns: list[str]
    order: dict[str, list] | None = None
    max_categories: int | None = None

    def fit(self, frame, ctx: StepContext) -> dict:
        columns = self.named(frame, ctx, self.columns)
        given = self.order or {}
        unknown = set(given) - set(columns)
        if unknown:
            raise ShoalError(f"{ctx.where}: 'order' names '{sorted(unknown)[0]}', which is not in columns")
        fitted = _categories(frame, [c for c in columns if c not in given], ctx, self.max_categories)
        return {c: given.get(c, fitted.get(c)) for c in columns}

    def apply(self, frame, params: dict, ctx: StepContext):
        self.named(frame, ctx, params)
        return frame.assign(
            **{c: frame[c].map_partitions(_ordinal, cats, meta=(c, "int64")) for c, cats in params.items()}
        )


def _generalize(values: pd.Series, lookup: dict, other) -> pd.Series:
    mapped = values.astype(object).map(lookup)
    if other is None:
        mapped = mapped.where(mapped.notna(), values.astype(object))
    else:
        mapped = mapped.where(mapped.notna() | values.isna(), other)
    return mapped.astype("string")


class Generalize(Step):
    """Replace categories by broader groups: groups = {group = [values]}; others become `other` or stay (keep_others)."""

    op: Literal["generalize"]
    column: str
    groups: dict[str, list]
    other: str = "other"
    keep_others: bool = False

    def apply(self, frame, params, ctx: StepContext):
        self.named(frame, ctx, [self.column])
        lookup = {v: group for group, values in self.groups.items() for v in values}
        other = None if self.keep_others else self.other
        return frame.assign(
            **{self.column: frame[self.column].map_partitions(_generalize, lookup, other, meta=(self.column, "string"))}
        )
