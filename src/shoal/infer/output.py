"""Inference output: one .npz shard per replica (`outputs`, `predictions`), a manifest naming them in input order,
and metrics.json. Every file is written under a temporary name and renamed, and the whole output directory
appears by one rename, so a crash never leaves something that looks finished."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from shoal.errors import ShoalError
from shoal.run_dir import atomic_write_bytes

MANIFEST = "manifest.json"
FORMAT = "shoal-infer-v1"


def staging_dir(out: Path, overwrite: bool) -> Path:
    """An empty directory next to `out` to write into; `commit` renames it into place."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ShoalError(f"--out: '{out}' already holds files; pass --overwrite to replace them")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def shard_name(rank: int) -> str:
    return f"part-{rank:05d}.npz"


def write_shard(directory: Path, rank: int, arrays: dict[str, np.ndarray]) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = Path(directory) / shard_name(rank)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_manifest(directory: Path, shards: list[str], rows: list[int], info: dict) -> Path:
    body = {"format": FORMAT, "shards": shards, "rows": rows, **info}
    path = Path(directory) / MANIFEST
    atomic_write_bytes(path, (json.dumps(body, indent=1) + "\n").encode())
    return path


def read_outputs(directory: str | Path) -> dict[str, np.ndarray]:
    """Every shard's arrays concatenated in input order."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    parts = [np.load(directory / s) for s in manifest["shards"]]
    keys = parts[0].files if parts else []
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}
