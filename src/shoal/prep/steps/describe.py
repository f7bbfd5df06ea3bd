"""Statistics as a step: look at the data at one point of the pipeline, change nothing."""

from __future__ import annotations

from typing import Literal

from shoal.prep._columns import require_columns
from shoal.prep.stats import DEFAULT_QUANTILES, column_statistics
from shoal.prep.steps.base import Step, StepContext


class Stats(Step):
    """Record statistics of the frame at this point of the pipeline under `name` (data unchanged)."""

    op: Literal["stats"]
    name: str | None = None
    columns: list[str] | None = None
    quantiles: list[float] = DEFAULT_QUANTILES
    distinct: bool = True

    def observe(self, frame, ctx: StepContext) -> None:
        columns = require_columns(frame, self.columns, ctx.where) if self.columns else None
        name = self.name or f"step{len(ctx.stats) + 1}"
        ctx.stats[name] = column_statistics(frame, columns, self.quantiles, self.distinct)

    def apply(self, frame, params, ctx: StepContext):
        return frame
