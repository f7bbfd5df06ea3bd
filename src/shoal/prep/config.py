"""The pipeline TOML as pydantic models; unknown keys and bad values become one-line ShoalErrors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shoal.errors import ShoalError
from shoal.prep.steps import STEP_TYPES, AnyStep


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(_Strict):
    """One table: Parquet or CSV files (a path or a glob), optionally inside an installed package."""

    name: str
    path: str
    package: str | None = None
    format: Literal["parquet", "csv"] | None = None
    columns: list[str] | None = None
    rename: dict[str, str] = Field(default_factory=dict)
    dtypes: dict[str, str] = Field(default_factory=dict)
    partitions: int | None = Field(default=None, ge=1)
    unique_on: list[str] | None = None
    """Keep the first row per key, e.g. a lookup table that will be joined on these keys."""
    blocksize: str = "64MB"


class Label(_Strict):
    """The training target; a classification label is stored as int64 codes 0..C-1."""

    column: str
    kind: Literal["classification", "regression"] = "classification"


class Output(_Strict):
    dir: str | None = None
    shards: int | None = Field(default=None, ge=1)
    features: list[str] | None = None


class Pipeline(_Strict):
    base: str | None = None
    source: list[Source] = Field(default_factory=list)
    step: list[AnyStep] = Field(default_factory=list)
    label: Label | None = None
    output: Output = Field(default_factory=Output)

    @model_validator(mode="after")
    def _names(self):
        names = [s.name for s in self.source]
        if len(set(names)) != len(names):
            raise ValueError("source names must be unique")
        if self.base is not None and self.base not in names:
            raise ValueError(f"base '{self.base}' is not a source name")
        return self

    @property
    def base_source(self) -> str:
        return self.base or self.source[0].name


def _where(loc: tuple, data: dict) -> str:
    """('step', 2, 'fill', 'x') -> 'step 3 (fill).x' : what a user finds in their file."""
    parts, node = [], data
    i = 0
    while i < len(loc):
        key = loc[i]
        if key in ("step", "source") and i + 1 < len(loc) and isinstance(loc[i + 1], int):
            entry = (node.get(key) or [{}])[loc[i + 1]] if isinstance(node, dict) else {}
            tag = entry.get("op") or entry.get("name") or "" if isinstance(entry, dict) else ""
            parts.append(f"{key} {loc[i + 1] + 1}" + (f" ({tag})" if tag else ""))
            node = entry
            i += 2
            if key == "step" and i < len(loc) and loc[i] == tag:
                i += 1  # pydantic repeats the discriminator value in the path
            continue
        parts.append(str(key))
        node = node.get(key, {}) if isinstance(node, dict) else {}
        i += 1
    return ".".join(parts) if parts else "pipeline"


def _first_error(err: ValidationError, data: dict, origin: str) -> ShoalError:
    e = err.errors()[0]
    where = _where(tuple(e["loc"]), data)
    if e["type"] == "extra_forbidden":
        return ShoalError(f"{origin}: {where}: unknown key; check its spelling in docs/prep.md")
    if e["type"] == "union_tag_invalid":
        ops = ", ".join(t.model_fields["op"].annotation.__args__[0] for t in STEP_TYPES)
        return ShoalError(f"{origin}: {where}: op '{e['input'].get('op')}' is unknown; ops are: {ops}")
    if e["type"] == "union_tag_not_found":
        return ShoalError(f"{origin}: {where}: every [[step]] needs an 'op'")
    message = e["msg"].removeprefix("Value error, ")
    return ShoalError(f"{origin}: {where}: {message}")


def parse_pipeline(data: dict, origin: str = "pipeline") -> Pipeline:
    try:
        return Pipeline.model_validate(data)
    except ValidationError as err:
        raise _first_error(err, data, origin) from None


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline TOML; every user mistake is a one-line ShoalError."""
    path = Path(path)
    if not path.is_file():
        raise ShoalError(f"pipeline file '{path}' does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ShoalError(f"{path}: not valid TOML: {err}") from None
    return parse_pipeline(data, str(path))
