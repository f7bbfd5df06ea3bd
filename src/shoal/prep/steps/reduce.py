"""Reduction: fewer columns that carry the same information (PCA, constant/id/low-variance drops)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import model_validator

from shoal.errors import ShoalError
from shoal.prep._columns import as_float, is_numeric
from shoal.prep.aggregates import covariance, distinct_counts, moments
from shoal.prep.steps.base import Step, StepContext


def _project(part: pd.DataFrame, columns, mean, components, names, keep) -> pd.DataFrame:
    scores = (as_float(part, columns) - mean) @ components.T
    rest = part if keep else part.drop(columns=columns)
    return rest.assign(**{n: scores[:, i] for i, n in enumerate(names)})


class PCA(Step):
    """Principal components, fitted exactly from a distributed covariance and numpy.linalg.eigh.

    One streaming pass merges per-partition means and scatter matrices (Chan's update);
    the eigen-decomposition of the small d x d covariance gives the same components as
    scikit-learn's full SVD up to sign (we flip signs as sklearn's svd_flip does) and float
    rounding. Keep k components, or the fewest whose explained variance reaches `variance`.
    """

    op: Literal["pca"]
    columns: list[str] | None = None
    n_components: int | None = None
    variance: float | None = None
    prefix: str = "pc"
    keep_columns: bool = False

    @model_validator(mode="after")
    def _one_target(self):
        if (self.n_components is None) == (self.variance is None):
            raise ValueError("give exactly one of 'n_components' and 'variance'")
        if self.n_components is not None and self.n_components < 1:
            raise ValueError("n_components must be >= 1")
        if self.variance is not None and not 0 < self.variance <= 1:
            raise ValueError("variance must be in (0, 1]")
        return self

    def fit(self, frame, ctx: StepContext) -> dict:
        columns = self.numeric_targets(frame, ctx, self.columns)
        if self.n_components is not None and self.n_components > len(columns):
            raise ShoalError(
                f"{ctx.where}: n_components = {self.n_components} is larger than the "
                f"{len(columns)} input columns ({', '.join(columns)})"
            )
        n, mean, cov, missing = covariance(frame, columns)
        if missing:
            raise ShoalError(f"{ctx.where}: the input columns hold {missing} missing values; add a fill step before pca")
        if n < 2:
            raise ShoalError(f"{ctx.where}: pca needs at least 2 rows, got {n}")
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        order = np.argsort(eigenvalues)[::-1]
        explained = np.clip(eigenvalues[order], 0, None)
        components = eigenvectors[:, order].T
        strongest = np.argmax(np.abs(components), axis=1)
        components *= np.sign(components[np.arange(len(components)), strongest])[:, None]
        ratio = explained / explained.sum() if explained.sum() > 0 else np.zeros_like(explained)
        if self.n_components is not None:
            k = self.n_components
        else:
            k = min(int(np.searchsorted(np.cumsum(ratio), self.variance, side="right")) + 1, len(columns))
        return {
            "columns": columns,
            "mean": mean,
            "components": components[:k],
            "explained_variance": explained[:k].tolist(),
            "explained_variance_ratio": ratio[:k].tolist(),
        }

    def apply(self, frame, params: dict, ctx: StepContext):
        columns = self.named(frame, ctx, params["columns"])
        mean, components = np.asarray(params["mean"]), np.asarray(params["components"])
        names = [f"{self.prefix}{i + 1}" for i in range(len(components))]
        meta = _project(frame._meta, columns, mean, components, names, self.keep_columns)
        return frame.map_partitions(_project, columns, mean, components, names, self.keep_columns, meta=meta)


class DropConstant(Step):
    """Drop columns holding at most one distinct non-missing value."""

    op: Literal["drop_constant"]
    columns: list[str] | None = None

    def fit(self, frame, ctx: StepContext) -> dict:
        columns = self.named(frame, ctx, self.columns) if self.columns else [c for c in frame.columns if c != ctx.label]
        numeric = [c for c in columns if is_numeric(frame.dtypes[c])]
        other = [c for c in columns if c not in numeric]
        summary = moments(frame, numeric) if numeric else None
        drop = set()
        for i, c in enumerate(numeric):
            if summary.count[i] == 0 or summary.minimum[i] == summary.maximum[i]:
                drop.add(c)
        drop |= {c for c, k in distinct_counts(frame, other).items() if k <= 1}
        return {"drop": [c for c in columns if c in drop]}

    def apply(self, frame, params: dict, ctx: StepContext):
        return frame.drop(columns=[c for c in params["drop"] if c in frame.columns])


class DropIdentifiers(Step):
    """Drop identifier-like columns: integer or text columns whose values are (nearly) all distinct."""

    op: Literal["drop_identifiers"]
    columns: list[str] | None = None
    min_unique_fraction: float = 0.95

    def fit(self, frame, ctx: StepContext) -> dict:
        columns = self.named(frame, ctx, self.columns) if self.columns else [c for c in frame.columns if c != ctx.label]
        candidates = [
            c for c in columns
            if pd.api.types.is_integer_dtype(frame.dtypes[c]) or pd.api.types.is_string_dtype(frame.dtypes[c])
        ]  # fmt: skip
        if not candidates:
            return {"drop": []}
        distinct = distinct_counts(frame, candidates)
        counts = frame[candidates].count().compute()
        return {"drop": [c for c in candidates if counts[c] and distinct[c] / counts[c] >= self.min_unique_fraction]}

    apply = DropConstant.apply


class VarianceThreshold(Step):
    """Drop numeric columns whose variance (ddof=0) is not above threshold, as sklearn's VarianceThreshold."""

    op: Literal["variance_threshold"]
    columns: list[str] | None = None
    threshold: float = 0.0

    def fit(self, frame, ctx: StepContext) -> dict:
        columns = self.numeric_targets(frame, ctx, self.columns)
        summary = moments(frame, columns)
        variance = summary.variance(ddof=0)
        if self.threshold == 0:  # as sklearn: peak-to-peak guards against rounding in the variance
            variance = np.fmin(variance, summary.maximum - summary.minimum)
        return {"drop": [c for c, v in zip(columns, variance) if not v > self.threshold]}

    apply = DropConstant.apply
