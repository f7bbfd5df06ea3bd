"""Parquet read per rank (`data.read = "rank"`) and streamed (`"stream"`): the same samples as reading every row,
only the rows a rank uses in memory, blocks visited one at a time, and a stream position that checks itself."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from parquet_files import BOUNDS, FEATURES, ROW_GROUP, write_shards
from shoal.config import DataConfig, validate
from shoal.data import fetch, load
from shoal.data.parquet_rows import RankRows
from shoal.data.plan import BatchPlan, StreamPlan, rank_epoch
from shoal.data.prefetch import wanted
from shoal.data.stream import StreamPosition
from shoal.errors import ShoalError

N = BOUNDS[-1][1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("pq") / "prep")


def data(path, read: str, **keys) -> DataConfig:
    return DataConfig(name="parquet", path=str(path), read=read, **keys)


def every_row(path) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path / "part-0.parquet"), pq.read_table(path / "part-1.parquet"), pq.read_table(path / "part-2.parquet")
    x = np.concatenate([np.column_stack([t.column(c).to_numpy() for c in FEATURES]) for t in table])
    return x, np.concatenate([t.column("label").to_numpy() for t in table])


@pytest.mark.parametrize("limits", [{}, {"limit_train": 100, "limit_eval": 30}])
def test_rank_read_gives_the_samples_of_reading_every_row(shards, limits):
    every, rank = load(data(shards, "all", **limits), 5), load(data(shards, "rank", **limits), 5)
    assert rank.spec == every.spec
    for a, b in ((every.train, rank.train), (every.eval, rank.eval)):
        i = np.arange(len(a))
        assert all(torch.equal(u, v) for u, v in zip(fetch(a, i), fetch(b, i)))


def test_a_rank_holds_its_share_of_the_epoch_only(shards):
    plan = BatchPlan(480, 32, 2, seed=5)
    every = load(data(shards, "all"), 5).train
    held = []
    for rank in (0, 1):
        train = load(data(shards, "rank"), 5).train
        share = rank_epoch(plan, 0, rank)
        train.hold(share)
        stats = train.source.stats
        assert stats.rows_read == len(share) == 240  # half the training rows
        x, y = fetch(train, share)
        assert stats.on_demand_rows == 0 and torch.equal(x, every.tensors[0][share]) and torch.equal(y, every.tensors[1][share])
        assert train.held_bytes == 240 * (4 * len(FEATURES) + 8 + 8)  # features, label, row number: no other row
        held.append(set(share.tolist()))
    assert held[0].isdisjoint(held[1]) and len(held[0] | held[1]) == 480
    train.hold(rank_epoch(plan, 1, 1))  # the next epoch's share replaces this one
    assert train.source.stats.rows_read == 480 and len(train.held) == 240


def test_row_groups_without_a_wanted_row_are_not_decoded(shards):
    source = load(data(shards, "rank"), 5).train.source
    first_rows = RankRows(source, np.arange(N))
    first_rows.hold(np.arange(2 * ROW_GROUP))
    assert source.stats.groups_read == 2 and source.stats.rows_read == 2 * ROW_GROUP


@pytest.mark.parametrize("shuffle", [True, False])
def test_stream_plan_visits_blocks_one_after_another_whatever_the_world(shuffle):
    n, block, batch = 1000, 128, 32
    one, two = StreamPlan(n, batch, 1, shuffle=shuffle, seed=3, block=block), StreamPlan(n, batch, 2, shuffle=shuffle, seed=3, block=block)
    order = one.epoch_order(1)
    assert sorted(order.tolist()) == list(range(n))
    assert shuffle != np.array_equal(order, np.arange(n))
    assert not np.array_equal(one.epoch_order(0), order) or not shuffle  # a new order every epoch
    for step in range(one.steps_per_epoch()):
        whole = one.step(1, step)[0]
        assert len(np.unique(whole // block)) <= 2  # a batch lies in at most two blocks
        assert np.array_equal(np.concatenate(two.step(1, step)), whole)  # two ranks split the same batch


def test_stream_reads_rows_in_order_and_holds_two_blocks(shards):
    splits = load(data(shards, "stream", stream_block_rows=64, eval_fraction=0.2), 5)
    x, y = every_row(shards)
    assert len(splits.train) == 480 and len(splits.eval) == 120  # the trailing fifth evaluates
    plan = StreamPlan(480, 32, 1, seed=5, block=64)
    for step in range(plan.steps_per_epoch()):
        idx = plan.step(0, step)[0]
        bx, by = fetch(splits.train, idx)
        assert np.array_equal(bx.numpy(), x[idx]) and np.array_equal(by.numpy(), y[idx])
        assert splits.train.held_bytes <= 2 * 64 * (4 * len(FEATURES) + 8)
    ex, ey = fetch(splits.eval, np.arange(120))
    assert np.array_equal(ex.numpy(), x[480:]) and np.array_equal(ey.numpy(), y[480:])


def test_stream_position_names_the_file_and_row_and_refuses_other_data(shards):
    train = load(data(shards, "stream", stream_block_rows=64), 5).train
    plan = StreamPlan(480, 32, 2, seed=5, block=64)
    saved = StreamPosition(plan, train)
    saved.at(17)  # epoch 1, step 2 of it: sample 64 of that epoch's order
    state = saved.state_dict()
    row = int(plan.order_slice(1, 64, 65)[0])
    part = next(i for i, (a, b) in enumerate(BOUNDS) if a <= row < b)
    assert (state["epoch"], state["sample"], state["file"], state["row"]) == (1, 64, f"part-{part}.parquet", row - BOUNDS[part][0])
    again = StreamPosition(plan, train)
    again.load_state_dict(state)
    assert again.step == 17
    for changed in (StreamPlan(480, 32, 2, seed=5, block=32), StreamPlan(400, 32, 2, seed=5, block=64)):
        with pytest.raises(ShoalError, match="stream position .* changed since the checkpoint"):
            StreamPosition(changed, train).load_state_dict(state)


@pytest.mark.parametrize("keys,message", [
    ({"data": {"name": "digits", "read": "rank"}}, "data.read = 'rank' reads Parquet files"),
    ({"data": {"read": "stream", "partition_scope": "dataset"}}, "needs data.partition_scope = 'batch'"),
    ({"data": {"read": "stream"}, "sync": "federated"}, "cannot feed sync = 'federated'"),
    ({"data": {"read": "rank"}, "parallel": {"balance": "speed"}}, "moves as it measures"),
    ({"data": {"read": "rank"}, "sync": "federated", "federated": {"split": "dirichlet"}}, "cannot split clients by label"),
])
def test_combinations_that_cannot_work_are_refused_in_one_line(shards, keys, message):
    raw = {**keys, "data": {"name": "parquet", "path": str(shards), **keys["data"]}}
    with pytest.raises(ShoalError, match=message) as err:
        validate(raw)
    assert "\n" not in str(err.value)


def test_auto_reads_per_rank_where_the_plan_is_known_in_advance(shards):
    path = {"name": "parquet", "path": str(shards)}
    assert validate({"data": path}).data_read() == "rank"
    assert validate({"data": path, "parallel": {"balance": "speed"}}).data_read() == "all"
    assert validate({"data": path, "sync": "federated", "federated": {"split": "label_skew"}}).data_read() == "all"
    assert validate({"data": {"name": "digits"}}).data_read() == "all"


def test_parquet_read_per_rank_or_streamed_is_fetched_ahead(shards):
    for read in ("rank", "stream"):
        assert wanted("auto", load(data(shards, read), 5).train)
