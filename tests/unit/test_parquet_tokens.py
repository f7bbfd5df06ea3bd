"""Parquet token columns read per rank (`data.read = "rank"`, the default): the samples, dtypes and targets of reading
the whole file, a rank holding only its rows, and a row longer than the model's length refused with one line."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from shoal.config import DataConfig
from shoal.data import fetch, load
from shoal.data.parquet_tokens import TokenRows
from shoal.errors import ShoalError


def write(path, lengths, labels_per_token: bool):
    g = np.random.default_rng(1)
    ids = [g.integers(1, 50, size=n).tolist() for n in lengths]
    cols = {"input_ids": ids, "attention_mask": [[1] * n for n in lengths]}
    if labels_per_token:
        cols["labels"] = ids
    else:
        cols["labels"] = [i % 3 for i in range(len(lengths))]
    pq.write_table(pa.table(cols), path, row_group_size=8)
    return path


@pytest.mark.parametrize("lm", [True, False])
def test_read_per_rank_gives_the_samples_of_reading_the_whole_file(tmp_path, lm):
    path = write(tmp_path / "t.parquet", [6] * 40, lm)
    every = load(DataConfig(name="parquet", path=str(path), read="all", eval_fraction=0.25), 5)
    rank = load(DataConfig(name="parquet", path=str(path), eval_fraction=0.25), 5)  # read = auto: per rank
    assert isinstance(rank.train, TokenRows) and rank.spec == every.spec
    for a, b in ((every.train, rank.train), (every.eval, rank.eval)):
        i = np.arange(len(a))
        (xa, ya), (xb, yb) = fetch(a, i), fetch(b, i)
        assert xa.keys() == xb.keys() and all(torch.equal(xa[k], xb[k]) and xb[k].dtype == torch.long for k in xa)
        assert torch.equal(ya, yb)


def test_a_rank_holds_only_its_rows_and_pads_a_batch_to_its_longest(tmp_path):
    lengths = [5, 3, 4, 5, 2, 5, 1, 4] * 5  # the first row group's longest is 5: the model's length
    path = write(tmp_path / "t.parquet", lengths, True)
    every = load(DataConfig(name="parquet", path=str(path), read="all", eval_fraction=0.25), 5).train
    train = load(DataConfig(name="parquet", path=str(path), eval_fraction=0.25), 5).train
    mine = np.arange(0, 30, 2)
    train.hold(mine)
    assert train.source.stats.rows_read == 15 and len(train.held) == 15
    x, y = fetch(train, mine[:4])
    xa, ya = fetch(every, mine[:4])
    longest = x["input_ids"].shape[1]
    assert longest == int(x["attention_mask"].sum(1).max()) and train.source.stats.on_demand_rows == 0
    for k in x:  # the whole-file batch padded to the file's longest row; here to the batch's: the same, cut
        assert torch.equal(x[k], xa[k][:, :longest])
    assert torch.equal(y, ya[:, :longest]) and (ya[:, longest:] == -100).all()


def test_a_row_longer_than_the_model_is_refused_with_one_line(tmp_path):
    path = write(tmp_path / "t.parquet", [3] * 8 + [9] + [3] * 7, True)  # longer than the first row group's rows
    train = load(DataConfig(name="parquet", path=str(path), eval_fraction=0.0), 5).train
    with pytest.raises(ShoalError, match=r"row 8 of 't.parquet' holds 9 tokens, more than the 3") as err:
        fetch(train, np.arange(16))
    assert "\n" not in str(err.value)
