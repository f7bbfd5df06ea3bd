"""Write the result as Parquet shards plus manifest.json, into a temporary sibling renamed at the end.

A run that fails leaves at most a hidden `.NAME.tmp-*` folder, never a directory with a
manifest, so nothing half-written looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import dask
import pyarrow as pa
import pyarrow.parquet as pq

from shoal.errors import ShoalError

MANIFEST_FORMAT = "shoal-parquet-v1"


def check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ShoalError(f"output '{out}' exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ShoalError(f"output directory '{out}' is not empty; choose another --out or pass --overwrite")


@contextmanager
def staged_directory(out: Path, overwrite: bool):
    """Yield a temporary directory next to out; on success it replaces out, on failure it is removed."""
    check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        trash = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(trash)
        staging.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(out)


def _write_part(part, path: str, schema: pa.Schema) -> int:
    if len(part) == 0:
        return 0
    table = pa.Table.from_pandas(part, schema=schema, preserve_index=False)
    pq.write_table(table, path)
    return len(part)


def write_shards(frame, directory: Path) -> tuple[list[str], list[int]]:
    """One shard per partition (empty partitions skipped), numbered without gaps."""
    schema = pa.Schema.from_pandas(frame._meta, preserve_index=False)
    parts = frame.to_delayed()
    names = [f"raw-{i:05d}.parquet" for i in range(len(parts))]
    task = dask.delayed(_write_part, pure=False)
    rows = dask.compute(*[task(p, str(directory / n), schema) for p, n in zip(parts, names)])
    shards, shard_rows = [], []
    for name, count in zip(names, rows):
        if count:
            final = f"part-{len(shards):05d}.parquet"
            (directory / name).rename(directory / final)
            shards.append(final)
            shard_rows.append(int(count))
    return shards, shard_rows


def write_manifest(directory: Path, shards, shard_rows, features, label, label_classes) -> Path:
    manifest = {
        "format": MANIFEST_FORMAT,
        "shards": shards,
        "shard_rows": shard_rows,
        "rows": int(sum(shard_rows)),
        "features": features,
        "label": label,
        "label_classes": label_classes,
    }
    path = directory / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path
