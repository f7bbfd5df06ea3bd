"""Each mistake a user can make gives a one-line ShoalError that names the thing to fix, and no output."""

import numpy as np
import pandas as pd
import pytest

from shoal.errors import ShoalError
from shoal.prep import run_prep

SOURCE = """
[[source]]
name = "d"
path = "d.parquet"
"""


@pytest.fixture
def workdir(tmp_path):
    rng = np.random.default_rng(0)
    pd.DataFrame({"x": rng.normal(size=50), "y": rng.normal(size=50), "name": pd.array(["a", "b"] * 25, dtype="string")}).to_parquet(
        tmp_path / "d.parquet"
    )
    pd.DataFrame({"key": [1, 2], "v": [0.1, 0.2]}).to_csv(tmp_path / "lookup.csv", index=False)
    (tmp_path / "empty.csv").write_text("x,y\n")
    return tmp_path


def fails(workdir, text: str, *expected: str):
    (workdir / "p.toml").write_text(text)
    with pytest.raises(ShoalError) as info:
        run_prep(workdir / "p.toml", workdir / "out")
    message = str(info.value)
    assert "\n" not in message, message
    for part in expected:
        assert part in message, message
    assert not (workdir / "out").exists() and not list(workdir.glob(".out.tmp-*"))
    return message


def step(body: str) -> str:
    return SOURCE + "\n[[step]]\n" + body


def test_missing_column(workdir):
    fails(workdir, step('op = "standardize"\ncolumns = ["nope"]'), "step 1 (standardize)", "'nope'", "not found")


def test_wrong_type(workdir):
    fails(workdir, step('op = "standardize"\ncolumns = ["name"]'), "'name'", "needs numbers")


def test_empty_source(workdir):
    text = SOURCE.replace('name = "d"', 'name = "e"').replace("d.parquet", "empty.csv")
    fails(workdir, text, "source 'e'", "empty")


def test_missing_file(workdir):
    fails(workdir, SOURCE.replace("d.parquet", "gone.parquet"), "source 'd'", "gone.parquet")


def test_join_key_absent(workdir):
    text = SOURCE + '[[source]]\nname = "lookup"\npath = "lookup.csv"\n' + '[[step]]\nop = "join"\nsource = "lookup"\non = ["key"]\n'
    fails(workdir, text, "step 1 (join)", "'key'")
    text = text.replace('on = ["key"]', 'left_on = ["x"]\nright_on = ["nokey"]')
    fails(workdir, text, "'nokey'", "source 'lookup'")


def test_join_unknown_source(workdir):
    fails(workdir, step('op = "join"\nsource = "elsewhere"\non = ["x"]'), "'elsewhere'")


def test_pca_k_larger_than_columns(workdir):
    fails(workdir, step('op = "pca"\ncolumns = ["x", "y"]\nn_components = 3'), "n_components = 3", "2 input columns")


def test_unknown_key_and_unknown_op(workdir):
    fails(workdir, step('op = "standardize"\ncolums = ["x"]'), "step 1 (standardize).colums", "unknown key")
    fails(workdir, step('op = "standardise"'), "op 'standardise' is unknown")
    fails(workdir, SOURCE + "[outptu]\n", "outptu", "unknown key")


def test_bad_value_names_the_field(workdir):
    fails(workdir, step('op = "fill"\nstrategy = "average"'), "step 1 (fill).strategy")


def test_label_problems(workdir):
    fails(workdir, SOURCE + '[label]\ncolumn = "target"\n', "label.column 'target'")
    fails(workdir, SOURCE + '[label]\ncolumn = "name"\nkind = "regression"\n', "'name'", "needs numbers")


def test_bad_expression(workdir):
    fails(workdir, step('op = "derive"\ncolumn = "z"\nexpr = "nope > 1"'), "step 1 (derive)", "nope")


def test_no_output_dir_and_bad_apply_dir(workdir):
    (workdir / "p.toml").write_text(SOURCE)
    with pytest.raises(ShoalError, match="--out"):
        run_prep(workdir / "p.toml")
    with pytest.raises(ShoalError, match="fitted.json"):
        run_prep(None, workdir / "out", apply_dir=workdir)


def test_existing_output_is_kept(workdir):
    (workdir / "out").mkdir()
    (workdir / "out" / "keep.txt").write_text("mine")
    (workdir / "p.toml").write_text(SOURCE)
    with pytest.raises(ShoalError, match="not empty"):
        run_prep(workdir / "p.toml", workdir / "out")
    assert (workdir / "out" / "keep.txt").read_text() == "mine"
    result = run_prep(workdir / "p.toml", workdir / "out", overwrite=True)
    assert result.rows == 50 and not (workdir / "out" / "keep.txt").exists()
