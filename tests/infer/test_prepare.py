"""A run trained on a `shoal prep` output: raw rows go through the fitted steps before the model, so inferring on
the raw file gives exactly what inferring on the prepared output gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shoal.cli import main
from shoal.infer import read_outputs
from shoal.prep import run_prep

PIPELINE = """
[[source]]
name = "rows"
path = "raw.parquet"

[[step]]
op = "fill"
strategy = "median"
columns = ["b"]

[[step]]
op = "standardize"
columns = ["a", "b"]

[label]
column = "kind"
"""


def test_raw_rows_are_prepared_with_the_fitted_steps(tmp_path):
    from conftest import train

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(5, 2, 300), "b": rng.normal(-3, 9, 300),
                          "kind": pd.array(rng.choice(["x", "y"], 300), dtype="string")})
    frame.loc[::11, "b"] = np.nan
    frame.to_parquet(tmp_path / "raw.parquet")
    (tmp_path / "prep.toml").write_text(PIPELINE)
    run_prep(tmp_path / "prep.toml", tmp_path / "prepared")
    run = train(tmp_path, "run", f'name = "prepped"\n[model]\nname = "mlp"\nhidden = [8]\n[data]\nname = "parquet"\n'
                                 f'path = "{tmp_path / "prepared"}"\n[train]\nglobal_batch_size = 30\nsteps = 3\n')
    frame.iloc[:40].to_parquet(tmp_path / "new.parquet")
    for name, data in (("raw", tmp_path / "new.parquet"), ("ref", tmp_path / "prepared")):
        with pytest.raises(SystemExit) as exit_:
            main(["infer", str(run), "--data", str(data), "--out", str(tmp_path / name)])
        assert exit_.value.code == 0
    raw, ref = read_outputs(tmp_path / "raw"), read_outputs(tmp_path / "ref")
    assert raw["outputs"].shape == (40, 2)
    assert np.abs(raw["outputs"] - ref["outputs"][:40]).max() <= 1e-5  # prep keeps row order within one partition
    assert (tmp_path / "raw" / "metrics.json").is_file() and not (tmp_path / "raw" / "prepared").exists()
