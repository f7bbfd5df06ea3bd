"""A run trained on a `shoal prep` output: raw rows go through the fitted steps before the model, so inferring on
the raw file gives exactly what inferring on the prepared output gives, and so does `shoal serve` on raw rows sent
as JSON objects (to 1e-5 of the prepared features through the model); bad raw rows get a 422 naming the sample."""

from __future__ import annotations

import json
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from serving import Server

from shoal.cli import main
from shoal.infer import build, read_outputs, resolve
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


@pytest.fixture(scope="module")
def prepped(tmp_path_factory):
    from conftest import train

    tmp = tmp_path_factory.mktemp("prepped")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(5, 2, 300), "b": rng.normal(-3, 9, 300),
                          "kind": pd.array(rng.choice(["x", "y"], 300), dtype="string")})
    frame.loc[::11, "b"] = np.nan
    frame.to_parquet(tmp / "raw.parquet")
    (tmp / "prep.toml").write_text(PIPELINE)
    run_prep(tmp / "prep.toml", tmp / "prepared")
    run = train(tmp, "run", f'name = "prepped"\n[model]\nname = "mlp"\nhidden = [8]\n[data]\nname = "parquet"\n'
                            f'path = "{tmp / "prepared"}"\n[train]\nglobal_batch_size = 30\nsteps = 3\n')
    return {"tmp": tmp, "frame": frame, "run": run}


def prepared_features(tmp) -> np.ndarray:
    manifest = json.loads((tmp / "prepared" / "manifest.json").read_text())
    frame = pd.concat([pd.read_parquet(tmp / "prepared" / s) for s in manifest["shards"]])
    return np.array(frame[manifest["features"]].to_numpy(np.float32))


def test_raw_rows_are_prepared_with_the_fitted_steps(prepped, tmp_path):
    frame, run = prepped["frame"], prepped["run"]
    frame.iloc[:40].to_parquet(tmp_path / "new.parquet")
    for name, data in (("raw", tmp_path / "new.parquet"), ("ref", prepped["tmp"] / "prepared")):
        with pytest.raises(SystemExit) as exit_:
            main(["infer", str(run), "--data", str(data), "--out", str(tmp_path / name)])
        assert exit_.value.code == 0
    raw, ref = read_outputs(tmp_path / "raw"), read_outputs(tmp_path / "ref")
    assert raw["outputs"].shape == (40, 2)
    assert np.abs(raw["outputs"] - ref["outputs"][:40]).max() <= 1e-5  # prep keeps row order within one partition
    assert (tmp_path / "raw" / "metrics.json").is_file() and not (tmp_path / "raw" / "prepared").exists()


def test_the_service_prepares_raw_rows_as_training_did(prepped):
    """Raw rows (missing values included, labels left out) through the service == the prepared features through the model."""
    frame, run = prepped["frame"], prepped["run"]
    rows = [{k: (None if v != v else v) for k, v in r.items() if k != "kind"} for r in frame.iloc[:40].to_dict("records")]
    with torch.no_grad():
        expected = build(resolve(run))(torch.from_numpy(prepared_features(prepped["tmp"])[:40])).numpy()
    server = Server(run, "--max-batch", "64").wait_ready()
    try:
        status, _, body = server.request("POST", "/v1/predict", {"inputs": rows})
        assert status == 200, body
        assert np.abs(np.array(body["outputs"]) - expected).max() <= 1e-5
        assert body["predictions"] == expected.argmax(1).tolist()
        one = server.request("POST", "/v1/predict", {"inputs": rows[11:12]})[2]  # a row whose b is missing: the fitted median
        assert rows[11]["b"] is None and np.abs(np.array(one["outputs"]) - expected[11:12]).max() <= 1e-5
        prepared = server.request("POST", "/v1/predict", {"inputs": prepared_features(prepped["tmp"])[:3].tolist()})[2]
        assert np.abs(np.array(prepared["outputs"]) - expected[:3]).max() <= 1e-5  # prepared features are still taken as they are
        for bad, words in [([{"a": 1.0, "zz": 2}], "inputs[0] has column 'zz'"),
                           ([{"a": 1.0}, {"a": "many"}], "inputs[1].a is \"many\", which is not float64"),
                           ([{"a": [1, 2]}], "inputs[0].a is [1, 2]"),
                           ([{"a": 1.0}, [0.1, 0.2]], "inputs[1] is not a JSON object"),
                           ([{"b": 1.0}], "inputs[0]: feature 'a' is missing")]:
            status, _, body = server.request("POST", "/v1/predict", {"inputs": bad})
            assert status == 422 and words in body["error"], (bad, body)
        assert server.request("POST", "/v1/predict", {"inputs": rows[:2]})[0] == 200
    finally:
        server.stop(signal.SIGKILL)
