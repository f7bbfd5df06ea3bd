"""Cleaning: fill missing values, tame outliers, drop rows or columns by rule."""

from __future__ import annotations

from typing import Any, Literal

import dask
from pydantic import model_validator

from shoal.errors import ShoalError
from shoal.prep.aggregates import mode_of, moments, value_counts
from shoal.prep.quantiles import exact_quantiles
from shoal.prep.steps.base import Step, StepContext


class Fill(Step):
    """Fill missing values of the columns with their mean, median, mode, or a constant."""

    op: Literal["fill"]
    columns: list[str] | None = None
    strategy: Literal["mean", "median", "mode", "constant"]
    value: Any = None

    @model_validator(mode="after")
    def _constant_needs_value(self):
        if (self.strategy == "constant") != (self.value is not None):
            raise ValueError("give 'value' exactly when strategy = \"constant\"")
        return self

    def fit(self, frame, ctx: StepContext) -> dict:
        if self.strategy == "constant":
            columns = self.named(frame, ctx, self.columns) if self.columns else list(frame.columns)
            return {c: self.value for c in columns}
        if self.strategy == "mode":
            columns = self.named(frame, ctx, self.columns) if self.columns else list(frame.columns)
            return {c: mode_of(value_counts(frame, c)) for c in columns}
        columns = self.numeric_targets(frame, ctx, self.columns)
        if self.strategy == "mean":
            summary = moments(frame, columns)
            return {c: float(m) for c, m in zip(columns, summary.mean)}
        medians = exact_quantiles(frame, columns, [0.5])
        return {c: medians[c][0] for c in columns}

    def apply(self, frame, params: dict, ctx: StepContext):
        self.named(frame, ctx, params)
        fills = {c: v for c, v in params.items() if v is not None and v == v}
        return frame.assign(**{c: frame[c].fillna(v) for c, v in fills.items()})


def _outside(frame, bounds: dict):
    mask = None
    for column, (lo, hi) in bounds.items():
        bad = (frame[column] < lo) | (frame[column] > hi)
        mask = bad if mask is None else mask | bad
    return mask


class Outliers(Step):
    """Clip values to bounds, or drop rows outside them. Bounds by quantiles or z-score (ddof=1)."""

    op: Literal["outliers"]
    columns: list[str] | None = None
    rule: Literal["quantile", "zscore"] = "quantile"
    lower: float = 0.01
    upper: float = 0.99
    threshold: float = 3.0
    action: Literal["clip", "drop"] = "clip"

    @model_validator(mode="after")
    def _ordered(self):
        if not 0 <= self.lower < self.upper <= 1:
            raise ValueError("need 0 <= lower < upper <= 1")
        if self.threshold <= 0:
            raise ValueError("threshold must be > 0")
        return self

    def fit(self, frame, ctx: StepContext) -> dict:
        columns = self.numeric_targets(frame, ctx, self.columns)
        if self.rule == "quantile":
            qs = exact_quantiles(frame, columns, [self.lower, self.upper])
            return {c: [float(q[0]), float(q[1])] for c, q in qs.items()}
        summary = moments(frame, columns)
        std = summary.variance(ddof=1) ** 0.5
        return {
            c: [float(m - self.threshold * s), float(m + self.threshold * s)]
            for c, m, s in zip(columns, summary.mean, std)
        }

    def apply(self, frame, params: dict, ctx: StepContext):
        self.named(frame, ctx, params)
        if self.action == "clip":
            return frame.assign(**{c: frame[c].clip(lo, hi) for c, (lo, hi) in params.items()})
        return frame[~_outside(frame, params).fillna(False).astype(bool)] if params else frame


class DropRows(Step):
    """Drop rows with missing values in given columns and/or rows where an expression holds."""

    op: Literal["drop_rows"]
    missing_in: list[str] | None = None
    how: Literal["any", "all"] = "any"
    where: str | None = None

    @model_validator(mode="after")
    def _has_rule(self):
        if not self.missing_in and not self.where:
            raise ValueError("give 'missing_in' or 'where'")
        return self

    def apply(self, frame, params, ctx: StepContext):
        if self.missing_in:
            frame = frame.dropna(subset=self.named(frame, ctx, self.missing_in), how=self.how)
        if self.where:
            try:
                hit = frame.eval(self.where)
            except Exception as exc:
                raise ShoalError(f"{ctx.where}: cannot evaluate where '{self.where}': {str(exc).splitlines()[0]}") from None
            frame = frame[~hit.fillna(False).astype(bool)]
        return frame


class DropColumns(Step):
    """Drop named columns, keep only named ones, or drop columns missing more than a fraction."""

    op: Literal["drop_columns"]
    columns: list[str] | None = None
    keep: list[str] | None = None
    max_missing_fraction: float | None = None

    @model_validator(mode="after")
    def _one_rule(self):
        rules = [self.columns is not None, self.keep is not None, self.max_missing_fraction is not None]
        if sum(rules) != 1:
            raise ValueError("give exactly one of 'columns', 'keep', 'max_missing_fraction'")
        return self

    def fit(self, frame, ctx: StepContext) -> dict:
        if self.columns is not None:
            return {"drop": self.named(frame, ctx, self.columns)}
        if self.keep is not None:
            keep = set(self.named(frame, ctx, self.keep))
            return {"drop": [c for c in frame.columns if c not in keep]}
        missing, rows = dask.compute(frame.isna().sum(), frame.shape[0])
        label = {ctx.label}
        return {"drop": [c for c in frame.columns if c not in label and rows and missing[c] / rows > self.max_missing_fraction]}

    def apply(self, frame, params: dict, ctx: StepContext):
        # fitting checked the names; new data may already lack some (e.g. the raw target)
        return frame.drop(columns=[c for c in params["drop"] if c in frame.columns])

