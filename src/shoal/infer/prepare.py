"""Fitted preprocessing at inference: raw rows for a run trained on a `shoal prep` output go through that output's
fitted steps (`shoal prep --apply`), with the new file in place of the pipeline's base source."""

from __future__ import annotations

import json
from pathlib import Path

from shoal.errors import ShoalError
from shoal.infer.source import Source
from shoal.prep import run_prep
from shoal.prep.fitted import FILE, load_fitted


def fitted_dir_of(source: Source) -> Path | None:
    """The `shoal prep` output the run trained on, when it holds fitted parameters."""
    data = source.cfg.data
    if data.name != "parquet" or not data.path:
        return None
    path = Path(data.path)
    if not path.is_absolute():
        path = (Path.cwd() / path) if (Path.cwd() / path).exists() else source.run / path
    return path if (path / FILE).is_file() else None


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def prepare(raw: Path, fitted: Path, out: Path) -> Path:
    """Apply the fitted steps to `raw` (in place of the base source; joined tables stay the fitted ones) into `out`."""
    pipeline = load_fitted(fitted)["pipeline"]
    base = pipeline.get("base") or pipeline["source"][0]["name"]
    lines = [f"base = {json.dumps(base)}"]
    for src in pipeline["source"]:
        src = dict(src, path=str(Path(raw).resolve())) if src["name"] == base else dict(src)
        if src["name"] == base:
            src.pop("format", None)
            src.pop("partitions", None)
        lines.append("[[source]]")
        lines += [f"{k} = {_toml(v)}" for k, v in src.items() if v is not None]
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = out.with_name(f".{out.name}.toml")
    spec.write_text("\n".join(lines) + "\n")
    run_prep(spec, out, apply_dir=fitted, overwrite=True)
    spec.unlink()
    return out


class FittedRows:
    """The fitted steps over rows held in memory (a service's raw samples, one JSON object each), by the same
    step code `shoal prep --apply` runs on files: the columns typed as the training source types them, the joined
    tables read once, every step but the fit-only ones in order, then the fitted features. A mistake in the rows
    is a ShoalError naming the sample and column."""

    def __init__(self, fitted: Path):
        import dask.dataframe as dd

        from shoal.prep.config import parse_pipeline
        from shoal.prep.sources import read_sources

        body = load_fitted(fitted)
        self.pipeline = parse_pipeline(body["pipeline"], f"{fitted}/{FILE}")
        self.params, self.features = body["params"], list(body["features"])
        base = self.pipeline.base_source
        try:
            sources = read_sources(self.pipeline.source, Path("."))  # lazy: only schemas, and the joined tables below
        except ShoalError as err:
            raise ShoalError(f"serve: the run's fitted preprocessing ({fitted}) needs its training sources: {err}") from None
        self.dtypes = dict(sources[base].dtypes)
        self.others = {k: dd.from_pandas(v.compute(scheduler="sync"), npartitions=1, sort=False)
                       for k, v in sources.items() if k != base}
        self.base = base

    def frame(self, rows: list[dict]):
        """The rows as a pandas frame with the training source's column types (an absent key is a missing value)."""
        import pandas as pd

        for i, row in enumerate(rows):
            unknown = [k for k in row if k not in self.dtypes]
            if unknown:
                raise ShoalError(f"inputs[{i}] has column '{unknown[0]}', which the run's raw data lacks "
                                 f"(columns: {', '.join(self.dtypes)})")
        columns = {}
        for name, dtype in self.dtypes.items():
            values = [row.get(name) for row in rows]
            try:
                columns[name] = pd.Series(values, dtype=dtype)
            except (TypeError, ValueError):
                for i, v in enumerate(values):
                    try:
                        pd.Series([v], dtype=dtype)
                    except (TypeError, ValueError):
                        raise ShoalError(f"inputs[{i}].{name} is {json.dumps(v)[:40]}, which is not {dtype} "
                                         "(the column's type in the run's raw data)") from None
                raise
        return pd.DataFrame(columns)

    def __call__(self, rows: list[dict]):
        """rows -> (samples, features) float32, one per row in order; rows a step drops are refused."""
        import dask
        import dask.dataframe as dd
        import numpy as np

        from shoal.prep.steps import StepContext

        frame = self.frame(rows)
        frame.index = range(len(frame))
        lazy = dd.from_pandas(frame, npartitions=1, sort=False)
        ctx = StepContext(sources={self.base: lazy, **self.others}, label=self.pipeline.label.column if self.pipeline.label else None,
                          applying=True)
        with dask.config.set(scheduler="sync"):
            for i, step in enumerate(self.pipeline.step):
                ctx.where = f"the run's fitted step {i + 1} ({step.op})"
                if not step.fit_only:
                    lazy = step.apply(lazy, self.params[i], ctx)
            missing = [f for f in self.features if f not in lazy.columns]
            if missing:
                raise ShoalError(f"the rows lack feature '{missing[0]}' after the run's fitted steps; send the raw columns")
            out = lazy[self.features].compute()
        if len(out) != len(rows):
            kept = set(out.index) if out.index.is_unique else set()
            gone = next((i for i in range(len(rows)) if i not in kept), None)
            where = f" (inputs[{gone}] first)" if gone is not None and len(out) < len(rows) else ""
            raise ShoalError(f"the run's fitted steps keep {len(out)} of the {len(rows)} rows{where}: rows a step drops "
                             "(missing values, outliers, duplicates) have no prediction; fix or leave out those rows")
        x = out.to_numpy(dtype=np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            i, j = (int(v[0]) for v in np.nonzero(bad))
            raise ShoalError(f"inputs[{i}]: feature '{self.features[j]}' is missing or not finite after the run's fitted steps")
        return x
