"""What every step is: a validated config that can fit parameters and apply them lazily."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from shoal.prep._columns import numeric_columns, require_columns, require_numeric


@dataclass
class StepContext:
    """What a step may look at besides its frame: the other sources, the label, the mode."""

    sources: dict[str, Any]
    label: str | None
    applying: bool = False
    where: str = "step"
    stats: dict[str, Any] = field(default_factory=dict)
    scratch: Path | None = None


class Step(BaseModel):
    """A pipeline step. fit() computes parameters (exact, streaming); apply() is lazy.

    Parameters are plain JSON values or numpy arrays, so fitted.py can save them and
    --apply can reuse them without refitting.
    """

    model_config = ConfigDict(extra="forbid")

    fit_only: bool = False
    """Skip this step under --apply (e.g. deriving the label from a column that new data lacks)."""

    def observe(self, frame, ctx: StepContext) -> None:
        """Look at the data in both modes without changing it (statistics do this)."""

    def fit(self, frame, ctx: StepContext) -> Any:
        return None

    def apply(self, frame, params: Any, ctx: StepContext):
        raise NotImplementedError

    # helpers shared by the steps -------------------------------------------------
    def numeric_targets(self, frame, ctx: StepContext, columns: list[str] | None) -> list[str]:
        """The named columns (checked numeric) or, when none are named, every numeric non-label column."""
        if columns is None:
            return numeric_columns(frame, exclude=[ctx.label] if ctx.label else [])
        return require_numeric(frame, columns, ctx.where)

    def named(self, frame, ctx: StepContext, columns: list[str]) -> list[str]:
        return require_columns(frame, columns, ctx.where)
