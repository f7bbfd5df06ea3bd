"""Statistics and exact quantiles against pandas / numpy, independent of the partitioning."""

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from shoal.prep import quantiles
from shoal.prep.stats import column_statistics, markdown_table


@pytest.fixture(scope="module")
def df():
    rng = np.random.default_rng(3)
    n = 3000
    frame = pd.DataFrame(
        {
            "normal": rng.normal(5, 2, n),
            "heavy": np.exp(rng.normal(size=n) * 4),  # most values crowd one histogram bin
            "ties": rng.integers(0, 6, n).astype("float64"),
            "count": rng.integers(0, 1000, n).astype("int64"),
            "text": pd.array(rng.choice(["a", "b", "c", "d"], n), dtype="string"),
        }
    )
    frame.loc[frame.index % 9 == 0, "normal"] = np.nan
    frame.loc[frame.index % 10 == 0, "text"] = pd.NA
    return frame


LEVELS = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999, 1.0]


@pytest.mark.parametrize("method", quantiles.METHODS)
@pytest.mark.parametrize("parts", [1, 6])
def test_exact_quantiles_equal_numpy(df, method, parts, monkeypatch):
    monkeypatch.setattr(quantiles, "GATHER_LIMIT", 50)  # force several narrowing passes
    cols = ["normal", "heavy", "ties", "count"]
    got = quantiles.exact_quantiles(dd.from_pandas(df, npartitions=parts), cols, LEVELS, method)
    for c in cols:
        expected = np.quantile(df[c].dropna().to_numpy(dtype=float), LEVELS, method=method)
        assert np.array_equal(got[c], expected), c


def test_quantiles_of_empty_and_constant_columns():
    frame = pd.DataFrame({"empty": [np.nan] * 4, "const": [2.0] * 4})
    got = quantiles.exact_quantiles(dd.from_pandas(frame, npartitions=2), ["empty", "const"], [0.5])
    assert np.isnan(got["empty"][0]) and got["const"] == [2.0]


@pytest.mark.parametrize("parts", [1, 4])
def test_column_statistics_match_pandas(df, parts):
    stats = column_statistics(dd.from_pandas(df, npartitions=parts), quantiles=[0.1, 0.5, 0.9])
    assert stats["rows"] == len(df)
    for c in ["normal", "heavy", "ties", "count"]:
        s, col = stats["columns"][c], df[c]
        assert (s["count"], s["missing"], s["distinct"]) == (col.count(), col.isna().sum(), col.nunique())
        for key, value in [("min", col.min()), ("max", col.max()), ("mean", col.mean()), ("median", col.median()),
                           ("var", col.var()), ("std", col.std())]:  # fmt: skip
            np.testing.assert_allclose(s[key], value, rtol=1e-6, err_msg=f"{c}.{key}")
        np.testing.assert_allclose([s["quantiles"][q] for q in ("0.1", "0.5", "0.9")], col.quantile([0.1, 0.5, 0.9]), rtol=1e-6)
    text = stats["columns"]["text"]
    assert (text["count"], text["missing"], text["distinct"]) == (df["text"].count(), df["text"].isna().sum(), 4)
    assert "min" not in text


def test_statistics_do_not_depend_on_partitions(df):
    one = column_statistics(dd.from_pandas(df, npartitions=1))
    many = column_statistics(dd.from_pandas(df, npartitions=7))
    for c, entry in one["columns"].items():
        for key, value in entry.items():
            if isinstance(value, float):
                np.testing.assert_allclose(many["columns"][c][key], value, rtol=1e-12)
            else:
                assert many["columns"][c][key] == value


def test_markdown_table_is_readable(df):
    text = markdown_table({"input": column_statistics(dd.from_pandas(df, npartitions=2))})
    assert "## input (3000 rows)" in text and "| normal | float64 |" in text
