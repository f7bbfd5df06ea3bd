"""Read lanes (`data.lanes`): the global batches do not depend on the world size, every sample comes once an epoch, and
each rank reads only the row groups (stream: blocks) of its own lanes, about 1/N of the file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parquet_files import FEATURES, write_shards
from shoal.config import validate
from shoal.data import fetch, load
from shoal.data.lanes import LanePlan
from shoal.data.parquet_rows import EpochShare
from shoal.data.plan import plan_for, rank_epoch
from shoal.errors import ShoalError

UNITS = (0, 40, 80, 100, 140, 180, 200, 260, 300, 333)  # uneven units, as row groups at file ends are


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("pq") / "prep")


def plan(world: int, **keys) -> LanePlan:
    return LanePlan(333, 32, world, seed=4, units=UNITS, lanes=4, **keys)


def job(shards, read: str = "rank", lanes: int = 4, **data):
    return validate({"seed": 3, "data": {"name": "parquet", "path": str(shards), "read": read, "lanes": lanes, **data},
                     "train": {"global_batch_size": 32}})


@pytest.mark.parametrize("mix", ["lane", "unit"])
def test_global_batches_do_not_depend_on_the_world_and_each_rank_keeps_to_its_units(mix):
    one = plan(1, mix=mix)
    for epoch in (0, 1):
        order = one.epoch_order(epoch)
        assert sorted(order.tolist()) == list(range(333))  # every sample once an epoch
        unit_of = np.searchsorted(UNITS, np.arange(333), side="right") - 1
        lanes = one.unit_lanes(epoch)
        for world in (2, 4):
            many = plan(world, mix=mix)
            for step in range(one.steps_per_epoch()):
                parts, whole = many.step(epoch, step), one.step(epoch, step)[0]
                assert sorted(np.concatenate(parts).tolist()) == sorted(whole.tolist())
                assert len(whole) == min(32, 333 - 32 * step)  # full batches but the last
                for rank, part in enumerate(parts):
                    assert (lanes[unit_of[part]] % world == rank).all()  # only its own lanes' units
    assert not np.array_equal(one.epoch_order(0), one.epoch_order(1))  # a new order every epoch


def test_every_batch_draws_from_every_lane():
    one = plan(1)
    unit_of = np.searchsorted(UNITS, np.arange(333), side="right") - 1
    lanes = one.unit_lanes(0)
    for step in range(one.steps_per_epoch() - 1):
        assert set(lanes[unit_of[one.step(0, step)[0]]].tolist()) == {0, 1, 2, 3}


def test_each_rank_decodes_only_its_own_row_groups(shards):
    cfg = job(shards)
    table = pa.concat_tables([pq.read_table(shards / f"part-{i}.parquet") for i in range(3)])
    every = np.column_stack([table.column(c).to_numpy() for c in FEATURES])
    seen, bytes_read = [], []
    for rank in (0, 1):
        train = load(cfg.data, cfg.seed).train
        p = plan_for(cfg, len(train), 2, train)
        assert isinstance(p, LanePlan) and len(p.units) == 18  # the files' 17 row groups (3 of them held out: empty here)
        EpochShare(train, p, rank).ready(0, None)
        sizes = np.diff(p.units)
        mine = {u for u, lane in enumerate(p.unit_lanes(0)) if lane % 2 == rank and sizes[u]}
        assert train.source.stats.groups == mine  # decoded: exactly its lanes' row groups
        x, y = fetch(train, rank_epoch(p, 0, rank))
        assert train.source.stats.on_demand_rows == 0 and train.source.stats.groups == mine
        assert np.array_equal(x.numpy(), every[train.rows[rank_epoch(p, 0, rank)]])
        seen.append(train.rows[rank_epoch(p, 0, rank)])
        bytes_read.append(train.source.stats.bytes_read)
    assert sorted(np.concatenate(seen).tolist()) == sorted(train.rows.tolist())  # together: every training row, once
    assert abs(bytes_read[0] - bytes_read[1]) < 0.25 * sum(bytes_read)  # about half the training rows' bytes each


def test_a_streaming_rank_reads_only_its_own_blocks_once(shards):
    cfg = job(shards, "stream", stream_block_rows=30)
    for rank in (0, 1):
        train = load(cfg.data, cfg.seed).train
        p = plan_for(cfg, len(train), 2, train)
        EpochShare(train, p, rank)  # two blocks of each of its two lanes at once
        for step in range(p.steps_per_epoch()):
            for part in np.array_split(p.step(0, step)[rank], 2):  # micro-batches, as the loop reads them
                fetch(train, part)
                assert len(train.cache) <= 4
        blocks = {b for b, lane in enumerate(p.unit_lanes(0)) if lane % 2 == rank}
        assert train.source.stats.rows_read == sum(min(30, len(train) - 30 * b) for b in blocks)  # each block once


def test_lanes_that_no_rank_count_divides_or_that_cannot_apply_are_refused(shards):
    with pytest.raises(ShoalError, match="data.lanes = 3 is not a multiple of the 2 data-parallel ranks"):
        plan_for(job(shards, lanes=3), 480, 2)
    for bad in ({"read": "all"}, {"partition_scope": "dataset"}):
        with pytest.raises(ShoalError, match="data.lanes needs"):
            job(shards, **bad)


def test_with_lanes_evaluation_holds_out_whole_row_groups(shards):
    splits = load(job(shards).data, 3)
    train, ev = splits.train, splits.eval
    assert abs(len(ev) - 120) <= 20 and len(train) + len(ev) == 600  # whole row groups nearest 0.2 of 600 rows
    assert not np.intersect1d(train.rows, ev.rows).size and len(np.union1d(train.rows, ev.rows)) == 600
    group = lambda rows: set((np.searchsorted(train.source.starts, rows, side="right") - 1).tolist())  # noqa: E731
    assert not group(train.rows) & group(ev.rows)  # no row group feeds both
