"""Column checks shared by the steps, so every step words its errors the same way."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from shoal.errors import ShoalError


def is_numeric(dtype) -> bool:
    """Numbers and booleans can become float32 features; strings and dates cannot."""
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_datetime64_any_dtype(dtype)


def require_columns(frame, columns: Iterable[str], where: str) -> list[str]:
    """Return the columns, or a ShoalError naming the first absent one and the ones that exist."""
    columns = list(columns)
    present = list(frame.columns)
    for column in columns:
        if column not in present:
            shown = ", ".join(map(str, present[:30])) + (" ..." if len(present) > 30 else "")
            raise ShoalError(f"{where}: column '{column}' not found; columns are: {shown}")
    return columns


def require_numeric(frame, columns: Iterable[str], where: str) -> list[str]:
    """Like require_columns, and each column must hold numbers."""
    columns = require_columns(frame, columns, where)
    for column in columns:
        dtype = frame.dtypes[column]
        if not is_numeric(dtype):
            raise ShoalError(
                f"{where}: column '{column}' has type {dtype}, needs numbers "
                "(cast it, or encode it with an ordinal/onehot step first)"
            )
    return columns


def numeric_columns(frame, exclude: Iterable[str] = ()) -> list[str]:
    """The numeric columns in frame order, without the excluded ones (the label)."""
    skip = set(exclude)
    return [c for c in frame.columns if c not in skip and is_numeric(frame.dtypes[c])]


def as_float(frame: pd.DataFrame, columns: list[str]):
    """A float64 matrix of the columns, missing values as NaN (nullable ints and bools too)."""
    import numpy as np

    if not columns:
        return np.empty((len(frame), 0))
    return frame[columns].to_numpy(dtype="float64", na_value=np.nan)


def column_values(frame: pd.DataFrame, column: str):
    """One column as a contiguous float64 array, missing values as NaN."""
    import numpy as np

    return frame[column].to_numpy(dtype="float64", na_value=np.nan)
