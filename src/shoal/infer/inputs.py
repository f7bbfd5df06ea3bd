"""The samples to infer on, from what `data.path` takes in training: an .npz (`x`, optional `y`), a Parquet file,
or a `shoal prep` output directory. Raw data for a run trained on a `shoal prep` output goes through that
output's fitted steps first (prepare.py), so inference sees exactly what training saw."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shoal.data.batches import batch_len
from shoal.errors import ShoalError
from shoal.infer.source import Source


@dataclass
class Inputs:
    x: torch.Tensor | dict[str, torch.Tensor]  # a dict of columns (input_ids, attention_mask, ...) for hf: models
    y: torch.Tensor | None
    path: Path

    def __len__(self) -> int:
        return batch_len(self.x)


def take(x, start: int, stop: int):
    """Samples [start, stop) of a tensor or of every column of a dict."""
    return {k: v[start:stop] for k, v in x.items()} if isinstance(x, dict) else x[start:stop]


def locate(path: str | Path, source: Source, scratch: Path) -> Path:
    """The file to read: `path` itself, or, for a run trained on a `shoal prep` output with fitted parameters and
    `path` a raw Parquet file (not itself a prep output), that output's fitted steps applied to it under `scratch`."""
    from shoal.infer.prepare import fitted_dir_of, prepare

    path = Path(path)
    if not path.exists():
        raise ShoalError(f"--data: '{path}' not found")
    fitted = fitted_dir_of(source)
    if path.suffix == ".npz" or fitted is None or (path / "manifest.json").is_file():
        return path
    return prepare(path, fitted, scratch / "prepared")


def read(path: str | Path, source: Source, rows: tuple[int, int] | None = None) -> Inputs:
    """All samples, or only rows [start, stop): of Parquet, only the files that hold them are read."""
    path = Path(path)
    if not path.exists():
        raise ShoalError(f"--data: '{path}' not found")
    if source.spec.dict_inputs:
        from shoal.infer.named import read_named

        return read_named(path, source, rows)
    if path.suffix == ".npz":
        x, y = _npz(path)
        if rows is not None:
            x, y = x[rows[0] : rows[1]], (y[rows[0] : rows[1]] if y is not None else None)
    else:
        x, y = _parquet(path, source, rows)
    check(x, y, source, f"--data '{path}'")
    return Inputs(x, y, path)


def check(x: torch.Tensor, y: torch.Tensor | None, source: Source, where: str) -> None:
    """Shape and dtype against what the model was trained on, naming the offending sample where one is wrong."""
    spec = source.spec
    if tuple(x.shape[1:]) != tuple(spec.input_shape):
        raise ShoalError(f"{where}: samples have shape {list(x.shape[1:])}, the model takes {list(spec.input_shape)}")
    if source.task == "lm":
        if x.dtype.is_floating_point:
            raise ShoalError(f"{where}: the gpt takes token ids (integers), got {x.dtype}")
        bad = ((x < 0) | (x >= source.spec.num_classes)).nonzero()
        if len(bad):
            raise ShoalError(f"{where}: sample {int(bad[0, 0])} holds token {int(x[tuple(bad[0])])}, outside 0..{spec.num_classes - 1}")
    elif not torch.isfinite(x).all():
        raise ShoalError(f"{where}: sample {int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0])} holds NaN or infinity")
    if y is not None and len(y) != len(x):
        raise ShoalError(f"{where}: {len(x)} samples but {len(y)} labels")
    if y is not None and ((y < 0) | (y >= spec.num_classes)).any():
        raise ShoalError(f"{where}: labels must be class codes 0..{spec.num_classes - 1}")


def _npz(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for a bad file
        raise ShoalError(f"--data: '{path}' is not a readable .npz file ({err})") from None
    if "x" not in z.files:
        raise ShoalError(f"--data: '{path}' has no array 'x' (it holds {', '.join(z.files) or 'nothing'})")
    return _tensor(z["x"]), torch.as_tensor(z["y"], dtype=torch.long) if "y" in z.files else None


def _tensor(x: np.ndarray) -> torch.Tensor:
    if np.issubdtype(x.dtype, np.integer):
        return torch.as_tensor(x, dtype=torch.long)
    if not np.issubdtype(x.dtype, np.floating):
        raise ShoalError(f"--data: array 'x' has dtype {x.dtype}; give numbers")
    return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)


def _parquet_files(path: Path) -> tuple[list[Path], dict]:
    if path.is_dir():
        mf = path / "manifest.json"
        if not mf.is_file():
            raise ShoalError(f"--data: directory '{path}' has no manifest.json; give a `shoal prep` output or a .parquet file")
        manifest = json.loads(mf.read_text())
        return [path / s for s in manifest["shards"]], manifest
    return [path], {}


def _feature_names(path: Path, source: Source) -> tuple[list[Path], list[str], str]:
    from shoal.infer.prepare import fitted_dir_of

    files, manifest = _parquet_files(path)
    data = source.cfg.data
    features = list(data.features or manifest.get("features") or [])
    label = data.label or manifest.get("label") or ""
    fitted = fitted_dir_of(source)
    if fitted is not None:
        trained = json.loads((fitted / "manifest.json").read_text())
        features, label = features or trained.get("features", []), label or trained.get("label") or ""
    if not features:
        raise ShoalError(f"--data '{path}': the run names no feature columns (data.features) and the file has no manifest")
    return files, features, label


def _features(path: Path, source: Source, must: bool) -> list[str] | None:
    """The feature columns when the file has them all; None (or, with `must`, an error naming one) when not."""
    import pyarrow.parquet as pq

    files, features, _ = _feature_names(path, source)
    try:
        columns = set(pq.read_schema(files[0]).names)
    except Exception as err:
        raise ShoalError(f"--data: cannot read '{files[0]}' as Parquet ({err})") from None
    missing = [f for f in features if f not in columns]
    if missing and must:
        raise ShoalError(f"--data '{path}': lacks feature column '{missing[0]}' (data.features)")
    return None if missing else features


def _parquet(path: Path, source: Source, rows: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files, features, label = _feature_names(path, source)
    _features(path, source, must=True)
    has_label = bool(label) and label in pq.read_schema(files[0]).names
    columns = [*features, label] if has_label else features
    skip = 0
    if rows is not None:  # only the files that overlap [start, stop), from their footers' row counts
        start, stop, kept, offset = rows[0], rows[1], [], 0
        for f in files:
            n = pq.ParquetFile(f).metadata.num_rows
            if offset < stop and offset + n > start:
                kept.append(f)
                skip = skip if len(kept) > 1 else start - offset
            offset += n
        files = kept or files[:1]  # an empty shard: no rows of the first file
    frame = pa.concat_tables([pq.read_table(f, columns=columns) for f in files]).to_pandas()
    if rows is not None:
        frame = frame.iloc[skip : skip + rows[1] - rows[0]]
    x = torch.from_numpy(np.array(frame[features].to_numpy(dtype=np.float32)))
    y = torch.from_numpy(np.array(frame[label].to_numpy(dtype=np.int64))) if has_label else None
    return x, y
