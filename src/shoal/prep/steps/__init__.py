"""The pipeline steps, grouped as the issue groups them: integrate, clean, reduce, transform."""

from typing import Annotated, Union

from pydantic import Field

from shoal.prep.steps.base import Step, StepContext
from shoal.prep.steps.clean import DropColumns, DropRows, Fill, Outliers
from shoal.prep.steps.describe import Stats
from shoal.prep.steps.integrate import Cast, Derive, DropDuplicates, Join, Rename, Units
from shoal.prep.steps.persist import Persist
from shoal.prep.steps.reduce import PCA, DropConstant, DropIdentifiers, VarianceThreshold
from shoal.prep.steps.transform import Discretize, Generalize, MinMax, OneHot, Ordinal, Standardize

STEP_TYPES = (
    Stats, Persist,
    Join, Rename, Cast, Units, Derive, DropDuplicates,
    Fill, Outliers, DropRows, DropColumns,
    PCA, DropConstant, DropIdentifiers, VarianceThreshold,
    Standardize, MinMax, Discretize, OneHot, Ordinal, Generalize,
)  # fmt: skip

AnyStep = Annotated[Union[STEP_TYPES], Field(discriminator="op")]

__all__ = ["AnyStep", "STEP_TYPES", "Step", "StepContext"]
