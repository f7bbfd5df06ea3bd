"""Batch shares: the sizes sum to the batch, are deterministic, and every sample is still used once an epoch."""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import pytest

from shoal.data import BatchPlan
from shoal.data.partition import STRATEGIES, deal, split_sizes
from shoal.train.balance import moved, shares_for


def test_largest_remainder_sums_and_stays_within_one_of_the_quota():
    rng = random.Random(0)
    for _ in range(300):
        n, k = rng.randrange(0, 200), rng.randrange(1, 6)
        shares = [rng.choice([rng.randrange(1, 10), rng.uniform(0.01, 5.0)]) for _ in range(k)]
        sizes = split_sizes(n, shares)
        assert sum(sizes) == n and all(s >= 0 for s in sizes)
        total = sum(Fraction(s) for s in shares)
        assert all(abs(size - n * Fraction(s) / total) < 1 for size, s in zip(sizes, shares))
        assert split_sizes(n, shares) == sizes  # deterministic


def test_known_splits():
    assert split_sizes(32, [24, 8]) == [24, 8]  # sample counts of a full batch come back exactly
    assert split_sizes(32, [3, 1]) == [24, 8]
    assert split_sizes(64, [3, 1]) == [48, 16]
    assert split_sizes(7, [3, 1]) == [5, 2]  # 5.25 / 1.75: the larger remainder (0.75) gets the spare sample
    assert split_sizes(3, [1, 1, 1, 1]) == [1, 1, 1, 0]  # equal remainders: ties to the lower rank, as array_split
    assert split_sizes(10, [2.0, 1.0]) == [7, 3]
    assert split_sizes(10, [0.1, 0.2]) == [3, 7]  # 0.1 + 0.2 != 0.3 in floats, still exact enough to sum to n


@pytest.mark.parametrize("bad", [[], [1, 0], [2, -1], [1, float("nan")], [1, float("inf")]])
def test_non_positive_shares_are_refused(bad):
    with pytest.raises(ValueError, match="positive"):
        split_sizes(8, bad)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_equal_sizes_deal_exactly_as_the_equal_deal(strategy):
    for n, world in [(10, 3), (64, 2), (3, 4), (0, 2)]:
        plain = deal(n, world, strategy, 5, 2, 1, 7)
        sized = deal(n, world, strategy, 5, 2, 1, 7, sizes=[len(p) for p in plain])
        assert [p.tolist() for p in plain] == [p.tolist() for p in sized]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sized_deal_is_disjoint_covering_and_has_the_sizes(strategy):
    parts = deal(32, 2, strategy, 3, sizes=[24, 8])
    assert [len(p) for p in parts] == [24, 8]
    assert sorted(np.concatenate(parts).tolist()) == list(range(32))


def test_round_robin_interleaves_uneven_shares():
    parts = deal(8, 2, "round_robin", sizes=[6, 2])
    assert parts[1].tolist() == [2, 6]  # spread through the batch, not bunched at one end
    assert parts[0].tolist() == [0, 1, 3, 4, 5, 7]


def epoch(plan: BatchPlan, e: int, shares) -> list[list[np.ndarray]]:
    return [plan.step(e, s, shares) for s in range(plan.steps_per_epoch())]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("n", [96, 100, 5])
def test_shares_of_24_and_8_use_every_sample_once_and_keep_the_global_batches(strategy, n):
    plan = BatchPlan(n, 32, 2, strategy, "batch", shuffle=True, seed=11)
    shared, equal = epoch(plan, 1, [24, 8]), epoch(plan, 1, None)
    assert sorted(np.concatenate([np.concatenate(s) for s in shared]).tolist()) == list(range(n))
    for with_shares, without in zip(shared, equal):  # the same global batch, only dealt differently
        assert sorted(np.concatenate(with_shares).tolist()) == sorted(np.concatenate(without).tolist())
        full = sum(len(p) for p in with_shares) == 32
        assert [len(p) for p in with_shares] == ([24, 8] if full else split_sizes(sum(map(len, with_shares)), [24, 8]))
    assert [x.tolist() for s in shared for x in s] == [x.tolist() for s in epoch(plan, 1, [24, 8]) for x in s]


def test_changing_shares_mid_epoch_still_uses_every_sample_once():
    plan = BatchPlan(200, 32, 3, "random", "batch", seed=2)
    rng = random.Random(4)
    seen = []
    for s in range(plan.steps_per_epoch()):
        shares = [rng.randrange(1, 20) for _ in range(3)]
        seen += np.concatenate(plan.step(0, s, shares)).tolist()
    assert sorted(seen) == list(range(200))


def test_shares_need_batch_scope():
    with pytest.raises(ValueError, match="scope"):
        BatchPlan(40, 8, 2, scope="dataset").step(0, 0, [3, 1])


# the speed balance: shares from speeds, hysteresis, state


def test_shares_for_follows_speed_and_keeps_a_sample_on_every_rank():
    assert shares_for(60, [2.0, 1.0]) == [40, 20]
    assert shares_for(32, [1.0, 1.0]) == [16, 16]
    assert shares_for(10, [1000.0, 1.0, 1.0]) == [8, 1, 1]  # 9.98 / 0.01 / 0.01 without the floor
    assert sum(shares_for(7, [3.3, 0.001, 2.2, 0.0001])) == 7
    assert moved([40, 20], [43, 17]) == 3 / 60


class FakeGroup:
    """A TrainingGroup whose all_gather returns rows a test chooses: [dp rank, samples, busy seconds]."""

    def __init__(self, rows):
        self.rows = rows

    def gather(self, values):
        return np.array(self.rows(values), dtype=np.float64)


def balance_for(rows, shares=(), threshold=0.05, log=None):
    from shoal.config import JobConfig
    from shoal.distributed.mesh import ParallelDims
    from shoal.train.balance import Balance

    cfg = JobConfig.model_validate({"train": {"global_batch_size": 60},
                                    "parallel": {"balance": "speed", "batch_shares": list(shares), "balance_threshold": threshold}})
    busy = iter(range(0, 10_000))
    return Balance(cfg, ParallelDims(2, 1, 1, 1, 2), FakeGroup(rows), 0, lambda: float(next(busy)), (log if log is not None else []).append, False)


def test_shares_follow_measured_speed_with_hysteresis():
    speed = {"ratio": 2.0}
    rows = lambda mine: [[0, 40, 1.0], [1, 40 / speed["ratio"], 1.0]]  # rank 1 does 1/ratio of rank 0's samples per second
    log = []
    b = balance_for(rows, shares=[1, 1], log=log)
    b.begin(0, None, None, None, None)
    assert b.shares == [30, 30] and log[-1]["reason"] == "config"
    b.after_log(10)
    assert b.shares == [40, 20] and log[-1] == {"kind": "balance", "step": 10, "shares": [40, 20], "speeds": [40.0, 20.0],
                                                "reason": "measured"}
    speed["ratio"] = 1.6  # the estimate moves halfway, to 40 / 22.5: 38:22 would move 2 samples of 60 (< 5%): the shares stay
    b.after_log(20)
    assert b.speeds == [40.0, 22.5] and shares_for(60, b.speeds) == [38, 22]
    assert b.shares == [40, 20] and len(log) == 2
    speed["ratio"] = 1.0  # estimate 40 / 31.25 -> 34:26, 10% of the batch moves
    b.after_log(30)
    assert b.shares == [34, 26] and log[-1]["step"] == 30 and len(log) == 3


def test_balance_state_round_trips_and_marks_the_resume():
    rows = lambda mine: [[0, 40, 1.0], [1, 20, 1.0]]
    a = balance_for(rows, shares=[1, 1])
    a.after_log(4)
    log = []
    b = balance_for(rows, shares=[1, 1], log=log)
    b.load_state_dict(a.state_dict())
    assert (b.shares, b.speeds, b.windows) == (a.shares, a.speeds, a.windows) == ([40, 20], [40.0, 20.0], 1)
    b.begin(4, None, None, None, None)
    assert log == [{"kind": "balance", "step": 4, "shares": [40, 20], "speeds": [40.0, 20.0], "reason": "resume"}]
    c = balance_for(rows)
    c.load_state_dict({**a.state_dict(), "shares": [30, 31]})  # another batch size: not taken
    assert c.shares == [30, 30] and not c.restored


# one-line refusals


def job(**parallel_and_more):
    from shoal.config import validate

    train = parallel_and_more.pop("train", {})
    data = parallel_and_more.pop("data", {})
    return validate({"train": {"global_batch_size": 32, **train}, "data": data, "parallel": parallel_and_more})


@pytest.mark.parametrize("overrides,world,message", [
    ({"batch_shares": [3, 1, 1]}, 2, "parallel.batch_shares has 3 entries; it needs one per data-parallel rank (dp x fsdp = 2)"),
    ({"batch_shares": [3, 1], "tp": 2}, 2, "it needs one per data-parallel rank (dp x fsdp = 1)"),
    ({"batch_shares": [100, 1]}, 2, "gives data-parallel rank 1 none of the 32 samples of a batch ([32, 0])"),
    ({"batch_shares": [3, 1], "data": {"partition_scope": "dataset"}}, 2, "need data.partition_scope = 'batch'"),
    ({"balance": "speed", "train": {"global_batch_size": 3}}, 4, "train.global_batch_size = 3 must be at least dp x fsdp = 4"),
    # under a pipeline every share is whole units of microbatches (2 x pp = 4) x grad_accum
    ({"batch_shares": [3, 1], "pp": 2, "train": {"global_batch_size": 30}}, 4, "must be a multiple of 4 and at least 8 (2 replicas)"),
    ({"balance": "speed", "pp": 2, "train": {"global_batch_size": 4}}, 4, "must be a multiple of 4 and at least 8"),
    ({"batch_shares": [100, 1], "pp": 2}, 4, "gives data-parallel rank 1 none of the 32 samples of a batch ([32, 0])"),
])
def test_unusable_shares_are_refused_in_one_line(overrides, world, message):
    from shoal.errors import ShoalError
    from shoal.job.checks import check_batching

    with pytest.raises(ShoalError) as err:
        check_batching(job(**overrides), 300, world)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides,message", [
    ({"batch_shares": [3, 0]}, "parallel.batch_shares: every share must be a positive number"),
    ({"batch_shares": [3, -1]}, "parallel.batch_shares: every share must be a positive number"),
])
def test_bad_share_values_are_refused_by_the_config(overrides, message):
    from shoal.errors import ShoalError

    with pytest.raises(ShoalError, match=message):
        job(**overrides)


def test_shares_lift_the_divisibility_rule():
    from shoal.job.checks import check_batching

    check_batching(job(batch_shares=[2, 1], train={"global_batch_size": 31, "grad_accum": 2}), 300, 2)
    check_batching(job(balance="speed", train={"global_batch_size": 31}), 300, 2)
