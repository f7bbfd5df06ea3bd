"""Every prep step against pandas / scikit-learn on the same data, with 1 and several partitions."""

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter
from sklearn import decomposition, feature_selection, preprocessing

from shoal.prep.steps import AnyStep, StepContext

RTOL = 1e-6
PARTS = [1, 5]


@pytest.fixture(scope="module")
def df():
    rng = np.random.default_rng(7)
    n = 2000
    frame = pd.DataFrame(
        {
            "a": rng.normal(10, 2, n),
            "b": rng.exponential(3, n),
            "c": rng.normal(size=n) * 0.5 + rng.normal(size=n),
            "k": rng.integers(0, 4, n).astype("int64"),
            "cat": pd.array(rng.choice(["red", "green", "blue"], n), dtype="string"),
            "const": np.full(n, 2.5),
            "ident": np.arange(n, dtype="int64"),
        }
    )
    frame.loc[frame.index % 13 == 0, "a"] = np.nan
    frame.loc[frame.index % 17 == 0, "cat"] = pd.NA
    return frame


def run_step(spec: dict, frame: pd.DataFrame, parts: int, sources=None, label=None):
    step = TypeAdapter(AnyStep).validate_python(spec)
    ddf = dd.from_pandas(frame, npartitions=parts)
    ctx = StepContext(sources={k: dd.from_pandas(v, npartitions=2) for k, v in (sources or {}).items()}, label=label)
    params = step.fit(ddf, ctx)
    return step.apply(ddf, params, ctx).compute(), params


def close(got, expected):
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(expected, dtype=float), rtol=RTOL, atol=1e-9)


# --- cleaning ---------------------------------------------------------------------
@pytest.mark.parametrize("parts", PARTS)
@pytest.mark.parametrize("strategy", ["mean", "median"])
def test_fill_numeric_matches_pandas(df, parts, strategy):
    got, params = run_step({"op": "fill", "strategy": strategy, "columns": ["a"]}, df, parts)
    expected = df["a"].fillna(getattr(df["a"], strategy)())
    close(params["a"], getattr(df["a"], strategy)())
    close(got["a"], expected)


@pytest.mark.parametrize("parts", PARTS)
def test_fill_mode_and_constant(df, parts):
    got, params = run_step({"op": "fill", "strategy": "mode", "columns": ["cat", "k"]}, df, parts)
    assert params == {"cat": df["cat"].mode().iloc[0], "k": int(df["k"].mode().iloc[0])}
    assert got["cat"].isna().sum() == 0 and (got["cat"] == df["cat"].fillna(params["cat"])).all()
    got, _ = run_step({"op": "fill", "strategy": "constant", "value": -1.0, "columns": ["a"]}, df, parts)
    close(got["a"], df["a"].fillna(-1.0))


@pytest.mark.parametrize("parts", PARTS)
def test_outliers_quantile_clip_matches_pandas(df, parts):
    got, params = run_step({"op": "outliers", "rule": "quantile", "lower": 0.05, "upper": 0.9, "columns": ["b"]}, df, parts)
    lo, hi = df["b"].quantile([0.05, 0.9])
    close(params["b"], [lo, hi])
    close(got["b"], df["b"].clip(lo, hi))


@pytest.mark.parametrize("parts", PARTS)
def test_outliers_zscore_drop_matches_pandas(df, parts):
    got, _ = run_step({"op": "outliers", "rule": "zscore", "threshold": 2.0, "action": "drop", "columns": ["b", "c"]}, df, parts)
    z = (df[["b", "c"]] - df[["b", "c"]].mean()) / df[["b", "c"]].std()
    expected = df[(z.abs() <= 2.0).all(axis=1)]
    assert list(got.index) == list(expected.index)


@pytest.mark.parametrize("parts", PARTS)
def test_drop_rows_by_missing_and_expression(df, parts):
    got, _ = run_step({"op": "drop_rows", "missing_in": ["a", "cat"], "where": "b > 5"}, df, parts)
    expected = df.dropna(subset=["a", "cat"])
    expected = expected[~(expected["b"] > 5)]
    assert list(got.index) == list(expected.index)


@pytest.mark.parametrize("parts", PARTS)
def test_drop_columns_rules(df, parts):
    got, _ = run_step({"op": "drop_columns", "columns": ["b"]}, df, parts)
    assert "b" not in got.columns
    got, _ = run_step({"op": "drop_columns", "keep": ["a", "k"]}, df, parts)
    assert list(got.columns) == ["a", "k"]
    sparse = df.assign(mostly_missing=np.where(df.index % 3 == 0, 1.0, np.nan))
    got, params = run_step({"op": "drop_columns", "max_missing_fraction": 0.5}, sparse, parts)
    assert params["drop"] == ["mostly_missing"]


# --- reduction --------------------------------------------------------------------
def _filled(df):
    return df.assign(a=df["a"].fillna(0.0))


@pytest.mark.parametrize("parts", PARTS)
def test_pca_k_matches_sklearn_up_to_sign(df, parts):
    data = _filled(df)
    got, params = run_step({"op": "pca", "columns": ["a", "b", "c"], "n_components": 2}, data, parts)
    ref = decomposition.PCA(n_components=2, svd_solver="full").fit(data[["a", "b", "c"]].to_numpy())
    signs = np.sign(np.sum(params["components"] * ref.components_, axis=1))
    close(params["components"] * signs[:, None], ref.components_)
    close(params["explained_variance"], ref.explained_variance_)
    close(params["explained_variance_ratio"], ref.explained_variance_ratio_)
    close(got[["pc1", "pc2"]].to_numpy() * signs, ref.transform(data[["a", "b", "c"]].to_numpy()))
    assert not {"a", "b", "c"} & set(got.columns)


@pytest.mark.parametrize("parts", PARTS)
def test_pca_variance_fraction_matches_sklearn(df, parts):
    data = _filled(df)
    got, params = run_step({"op": "pca", "columns": ["a", "b", "c", "k"], "variance": 0.8}, data, parts)
    ref = decomposition.PCA(n_components=0.8, svd_solver="full").fit(data[["a", "b", "c", "k"]].to_numpy())
    assert len(params["components"]) == ref.n_components_


@pytest.mark.parametrize("parts", PARTS)
def test_drop_constant_and_identifiers(df, parts):
    _, params = run_step({"op": "drop_constant"}, df, parts)
    assert params["drop"] == [c for c in df.columns if df[c].nunique() <= 1]
    _, params = run_step({"op": "drop_identifiers"}, df, parts)
    assert params["drop"] == ["ident"]


@pytest.mark.parametrize("parts", PARTS)
def test_variance_threshold_matches_sklearn(df, parts):
    cols = ["a", "b", "c", "k", "const"]
    data = _filled(df)
    _, params = run_step({"op": "variance_threshold", "columns": cols, "threshold": 1.5}, data, parts)
    ref = feature_selection.VarianceThreshold(1.5).fit(data[cols].to_numpy())
    assert params["drop"] == [c for c, keep in zip(cols, ref.get_support()) if not keep]


# --- transformation ---------------------------------------------------------------
@pytest.mark.parametrize("parts", PARTS)
def test_standardize_matches_standard_scaler(df, parts):
    cols = ["a", "b", "const"]
    got, _ = run_step({"op": "standardize", "columns": cols}, df, parts)
    close(got[cols], preprocessing.StandardScaler().fit_transform(df[cols].to_numpy()))


@pytest.mark.parametrize("parts", PARTS)
def test_minmax_matches_minmax_scaler(df, parts):
    cols = ["a", "b", "const"]
    got, _ = run_step({"op": "minmax", "columns": cols, "feature_range": [-1, 1]}, df, parts)
    close(got[cols], preprocessing.MinMaxScaler((-1, 1)).fit_transform(df[cols].to_numpy()))


@pytest.mark.parametrize("parts", PARTS)
@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_discretize_matches_kbins(df, parts, strategy):
    cols = ["b", "c", "k"]
    got, params = run_step({"op": "discretize", "columns": cols, "bins": 4, "strategy": strategy}, df, parts)
    ref = preprocessing.KBinsDiscretizer(n_bins=4, encode="ordinal", strategy=strategy)
    with _no_check():
        expected = ref.fit_transform(df[cols].to_numpy())
    for i, c in enumerate(cols):
        close(params[c], ref.bin_edges_[i])
    close(got[cols], expected)


class _no_check:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


@pytest.mark.parametrize("parts", PARTS)
def test_onehot_matches_sklearn(df, parts):
    data = df.dropna(subset=["cat"])
    got, params = run_step({"op": "onehot", "columns": ["cat", "k"]}, data, parts)
    ref = preprocessing.OneHotEncoder(sparse_output=False).fit(data[["cat", "k"]].astype(object))
    names = [f"{c}_{v}" for c, cats in zip(["cat", "k"], ref.categories_) for v in cats]
    assert names == [c for c in got.columns if c.startswith(("cat_", "k_"))]
    close(got[names], ref.transform(data[["cat", "k"]].astype(object)))


@pytest.mark.parametrize("parts", PARTS)
def test_ordinal_matches_sklearn_and_unknown_is_minus_one(df, parts):
    data = df.dropna(subset=["cat"])
    got, params = run_step({"op": "ordinal", "columns": ["cat"]}, data, parts)
    ref = preprocessing.OrdinalEncoder().fit(data[["cat"]].astype(object))
    close(got["cat"], ref.transform(data[["cat"]].astype(object))[:, 0])
    assert got["cat"].dtype == "int64"
    step = TypeAdapter(AnyStep).validate_python({"op": "ordinal", "columns": ["cat"]})
    new = dd.from_pandas(pd.DataFrame({"cat": pd.array(["red", "violet", None], dtype="string")}), npartitions=1)
    assert step.apply(new, params, StepContext({}, None)).compute()["cat"].tolist() == [params["cat"].index("red"), -1, -1]


@pytest.mark.parametrize("parts", PARTS)
def test_generalize_by_mapping(df, parts):
    spec = {"op": "generalize", "column": "cat", "groups": {"warm": ["red"], "cool": ["blue"]}, "other": "other"}
    got, _ = run_step(spec, df, parts)
    expected = df["cat"].map({"red": "warm", "blue": "cool", "green": "other"})
    assert got["cat"].fillna("<NA>").tolist() == expected.fillna("<NA>").tolist()


# --- integration ------------------------------------------------------------------
@pytest.mark.parametrize("parts", PARTS)
def test_join_matches_pandas_merge(df, parts):
    right = pd.DataFrame({"key": np.arange(4, dtype="int64"), "weight": [0.5, 1.5, 2.5, 3.5]})
    got, _ = run_step({"op": "join", "source": "r", "left_on": ["k"], "right_on": ["key"]}, df, parts, {"r": right})
    expected = df.merge(right, how="left", left_on="k", right_on="key").drop(columns="key")
    assert list(got.columns) == list(expected.columns)
    close(got["weight"], expected["weight"])


@pytest.mark.parametrize("parts", PARTS)
def test_rename_cast_units_derive(df, parts):
    got, _ = run_step({"op": "rename", "columns": {"a": "alpha"}}, df, parts)
    assert "alpha" in got.columns and "a" not in got.columns
    got, _ = run_step({"op": "cast", "columns": {"k": "float32"}}, df, parts)
    assert got["k"].dtype == np.float32
    got, _ = run_step({"op": "units", "columns": ["a"], "convert": "fahrenheit_to_celsius"}, df, parts)
    close(got["a"], (df["a"] - 32) * 5 / 9)
    got, _ = run_step({"op": "derive", "column": "big", "expr": "b > 3"}, df, parts)
    assert (got["big"] == (df["b"] > 3)).all()


@pytest.mark.parametrize("parts", [1, 3, 7])
def test_drop_duplicates_keeps_first_in_order(parts):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.integers(0, 5, 300), "y": rng.choice(["p", "q"], 300), "z": rng.normal(size=300)})
    got, _ = run_step({"op": "drop_duplicates", "subset": ["x", "y"]}, frame, parts)
    expected = frame.drop_duplicates(subset=["x", "y"])
    assert list(got.index) == list(expected.index)
    got, _ = run_step({"op": "drop_duplicates"}, pd.concat([frame, frame.iloc[:50]], ignore_index=True), parts)
    assert len(got) == 300
