"""docs/models.md as a user would run it: both Python examples, and both job files on data files of the shapes the
comments describe (an npz of named arrays, a Parquet file of token-id lists)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import shoal
from shoal.config import deep_merge
from shoal.job.worker import run_job

pytest.importorskip("transformers")
DOC = (Path(__file__).parents[2] / "docs" / "models.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.S)


@pytest.mark.parametrize("index", [0, 1])
def test_the_python_examples_run(index, capsys):
    exec(compile(_blocks("python")[index], "docs/models.md", "exec"), {})
    assert capsys.readouterr().out.strip()


def test_the_job_files_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = np.random.default_rng(0)
    ids = g.integers(1, 64, (40, 12))
    np.savez("tokens.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    rows = [list(r[: 6 + i % 6]) for i, r in enumerate(ids)]
    pq.write_table(pa.table({"input_ids": rows, "labels": [int(r[0] > 32) for r in rows]}), "reviews.parquet")
    for block in _blocks("toml")[:2]:
        cfg = shoal.JobConfig.model_validate(deep_merge(tomllib.loads(block), {"log": {"monitors": []}, "train": {"steps": 2}}))  # short; no mfu probe
        result = run_job(cfg, str(tmp_path / cfg.name))
        assert result["steps"] == 2 and np.isfinite(result["eval"]["loss"])
