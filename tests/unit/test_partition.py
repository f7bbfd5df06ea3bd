"""Partitioning: disjoint, covering, reproducible from the seed, for every strategy and uneven sizes."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.data import BatchPlan, deal
from shoal.data.partition import STRATEGIES


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("n,world", [(10, 3), (7, 4), (3, 4), (0, 2), (100, 1)])
def test_deal_is_disjoint_and_covers(strategy, n, world):
    parts = deal(n, world, strategy, seed=5)
    assert len(parts) == world
    joined = np.concatenate(parts)
    assert len(joined) == n and set(joined.tolist()) == set(range(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_strategies_differ_as_named():
    assert [p.tolist() for p in deal(6, 2, "contiguous")] == [[0, 1, 2], [3, 4, 5]]
    assert [p.tolist() for p in deal(6, 2, "round_robin")] == [[0, 2, 4], [1, 3, 5]]
    random = deal(60, 2, "random", seed=1)
    assert random[0].tolist() != list(range(30))
    assert [p.tolist() for p in deal(60, 2, "random", seed=1)] == [p.tolist() for p in random]
    assert [p.tolist() for p in deal(60, 2, "random", seed=2)] != [p.tolist() for p in random]


def test_unknown_strategy():
    with pytest.raises(ValueError, match="round_robin"):
        deal(4, 2, "striped")


def epoch_samples(plan: BatchPlan, epoch: int) -> list[list[np.ndarray]]:
    return [plan.step(epoch, s) for s in range(plan.steps_per_epoch())]


@pytest.mark.parametrize("scope", ["batch", "dataset"])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("n,batch,world", [(100, 8, 2), (103, 12, 4), (13, 4, 4), (5, 8, 1)])
def test_an_epoch_uses_every_sample_once(scope, strategy, n, batch, world):
    plan = BatchPlan(n, batch, world, strategy, scope, shuffle=True, seed=9)
    steps = epoch_samples(plan, epoch=0)
    per_rank = [np.concatenate([s[r] for s in steps]) for r in range(world)]
    everything = np.concatenate(per_rank)
    assert sorted(everything.tolist()) == list(range(n))  # covering, and disjoint (no repeats)
    assert all(sum(len(p) for p in s) <= batch for s in steps)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batch_scope_global_batches_do_not_depend_on_world_size(strategy):
    batches = {}
    for world in (1, 2, 3, 4):
        plan = BatchPlan(50, 12, world, strategy, "batch", shuffle=True, seed=4)
        batches[world] = [sorted(np.concatenate(s).tolist()) for s in epoch_samples(plan, 1)]
    assert batches[1] == batches[2] == batches[3] == batches[4]


def test_dataset_scope_keeps_each_rank_on_its_own_shard():
    plan = BatchPlan(40, 8, 2, "contiguous", "dataset", shuffle=True, seed=0)
    for epoch in (0, 1):
        seen = [np.concatenate([s[r] for s in epoch_samples(plan, epoch)]) for r in range(2)]
        assert set(seen[0].tolist()) == set(range(20)) and set(seen[1].tolist()) == set(range(20, 40))


def test_order_is_reproducible_and_changes_each_epoch():
    a = BatchPlan(30, 6, 2, "random", "batch", shuffle=True, seed=1)
    b = BatchPlan(30, 6, 2, "random", "batch", shuffle=True, seed=1)
    assert [x.tolist() for x in a.step(0, 2)] == [x.tolist() for x in b.step(0, 2)]
    assert [x.tolist() for x in a.step(0, 0)] != [x.tolist() for x in a.step(1, 0)]
    c = BatchPlan(30, 6, 2, "random", "batch", shuffle=True, seed=2)
    assert [x.tolist() for x in a.step(0, 0)] != [x.tolist() for x in c.step(0, 0)]


def test_drop_last_is_the_only_way_samples_are_dropped():
    keep = BatchPlan(103, 10, 2, drop_last=False)
    drop = BatchPlan(103, 10, 2, drop_last=True)
    assert keep.steps_per_epoch() == 11 and drop.steps_per_epoch() == 10
    assert sum(len(np.concatenate(s)) for s in epoch_samples(drop, 0)) == 100


def test_a_rank_may_get_nothing_at_the_end_of_an_epoch():
    plan = BatchPlan(9, 8, 4, "contiguous", "batch", shuffle=False)
    last = plan.step(0, 1)
    assert [len(p) for p in last] == [1, 0, 0, 0]
