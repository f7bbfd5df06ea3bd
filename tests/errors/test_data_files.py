"""Category: user data files whose content is wrong (.npz and Parquet): one line naming the file or column, before
any worker starts and before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from error_contract import job_file, refused

N = 40


def good() -> dict[str, np.ndarray]:
    g = np.random.default_rng(0)
    return {"x": g.standard_normal((N, 5)).astype(np.float32), "y": g.integers(0, 3, N)}


def npz(root: Path, **change) -> Path:
    arrays = {**good(), **change}
    path = root / "data.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def bad_crc(root: Path) -> Path:
    path = npz(root)
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF  # inside x.npy's bytes: the zip's CRC no longer matches
    path.write_bytes(bytes(data))
    return path


def truncated(root: Path) -> Path:
    path = npz(root)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def text_named(root: Path, name: str) -> Path:
    path = root / name
    path.write_text("a,b,label\n1,2,0\n")
    return path


g = np.random.default_rng(1)
NPZ = [
    # (id, make the file, words)
    ("bad_crc", bad_crc, ["data.path", "data.npz", "damaged", "CRC"]),
    ("truncated", truncated, ["data.path", "data.npz"]),
    ("text_as_npz", lambda r: text_named(r, "data.npz"), ["data.path", "not a readable .npz"]),
    ("string_x", lambda r: npz(r, x=np.array([["a"] * 5] * N)), ["'x'", "<U1", "numbers"]),
    ("object_x", lambda r: npz(r, x=np.array([{"a": 1}] * N, dtype=object)), ["'x'", "pickle"]),
    ("string_y", lambda r: npz(r, y=np.array(["cat"] * N)), ["'y'", "class codes"]),
    ("float_y", lambda r: npz(r, y=np.full(N, 0.5)), ["'y'", "non-integer label 0.5"]),
    ("nan_y", lambda r: npz(r, y=np.full(N, np.nan)), ["'y'", "non-integer label nan"]),
    ("huge_y", lambda r: npz(r, y=np.full(N, 10**12)), ["'y'", "1000000000000", "at most 1,000,000"]),
    ("negative_y", lambda r: npz(r, y=np.full(N, -3)), ["'y'", "-3"]),
    ("length_mismatch", lambda r: npz(r, y=np.zeros(N - 1, dtype=np.int64)), ["'x' has 40 samples", "'y' has 39"]),
    ("labels_2d", lambda r: npz(r, y=np.zeros((N, 3), dtype=np.int64)), ["'y' is shaped (40, 3)"]),
    ("inputs_1d", lambda r: npz(r, x=np.zeros(N, dtype=np.float32)), ["'x' is shaped (40,)", "reshape"]),
    ("eval_width", lambda r: npz(r, x_eval=np.zeros((10, 7), dtype=np.float32), y_eval=np.zeros(10, dtype=np.int64)),
     ["'x_eval'", "(7,)", "(5,)"]),
    ("eval_float_labels", lambda r: npz(r, x_eval=np.zeros((10, 5), dtype=np.float32), y_eval=np.full(10, 1.5)), ["'y_eval'", "1.5"]),
    ("eval_length", lambda r: npz(r, x_eval=np.zeros((10, 5), dtype=np.float32), y_eval=np.zeros(9, dtype=np.int64)), ["'x_eval' has 10"]),
    ("no_y", lambda r: npz(r, y=None), ["data.path", "'y'"]),
]


def frame(**change) -> pd.DataFrame:
    d = good()
    cols = {f"f{i}": d["x"][:, i] for i in range(5)} | {"label": d["y"]}
    return pd.DataFrame(cols | change)


def parquet(root: Path, df: pd.DataFrame, classes: int | None = None) -> Path:
    out = root / "prepped"
    out.mkdir()
    df.to_parquet(out / "part-00000.parquet")
    manifest = {"format": "shoal-parquet-v1", "shards": ["part-00000.parquet"], "rows": len(df),
                "features": [f"f{i}" for i in range(5)], "label": "label"}
    if classes:
        manifest["label_classes"] = classes
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def bad_manifest(root: Path) -> Path:
    out = parquet(root, frame())
    (out / "manifest.json").write_text("{not json")
    return out


PARQUET = [
    ("string_feature", lambda r: parquet(r, frame(f2=["x"] * N)), ["data.features", "'f2'", "string", "numbers"]),
    ("missing_feature", lambda r: parquet(r, frame().drop(columns="f3")), ["data.features", "'f3'", "is not in", "f4"]),
    ("missing_label", lambda r: parquet(r, frame().drop(columns="label")), ["data.label", "'label'", "is not in"]),
    ("string_label", lambda r: parquet(r, frame(label=["cat"] * N)), ["data.label", "'label'", "string", "class codes"]),
    ("float_label", lambda r: parquet(r, frame(label=np.full(N, 0.25))), ["label column 'label'", "0.25"]),
    ("beyond_manifest_classes", lambda r: parquet(r, frame(), classes=2), ["label_classes = 2"]),
    ("text_named_parquet", lambda r: text_named(r, "data.parquet"), ["data.path", "data.parquet", "not a readable Parquet"]),
    ("bad_manifest", bad_manifest, ["manifest.json", "not a valid manifest"]),
]


def _job(root: Path, kind: str, path: Path) -> Path:
    extra = 'features = ["f0", "f1", "f2", "f3", "f4"]\nlabel = "label"\n' if path.suffix == ".parquet" else ""
    return job_file(root, f'name = "t"\n[data]\nname = "{kind}"\npath = "{path}"\n{extra}[train]\nglobal_batch_size = 8\nsteps = 1\n')


@pytest.mark.parametrize("make,words", [c[1:] for c in NPZ], ids=[c[0] for c in NPZ])
def test_bad_npz_is_refused(tmp_path, capsys, make, words):
    job = _job(tmp_path, "npz", make(tmp_path))
    refused(["train", str(job), "--out", str(tmp_path / "run")], words, tmp_path, capsys)


@pytest.mark.parametrize("make,words", [c[1:] for c in PARQUET], ids=[c[0] for c in PARQUET])
def test_bad_parquet_is_refused(tmp_path, capsys, make, words):
    job = _job(tmp_path, "parquet", make(tmp_path))
    refused(["train", str(job), "--out", str(tmp_path / "run")], words, tmp_path, capsys)
