"""Batch shares under model parallelism, in one launch of 4 processes: with pp = 2 x dp = 2 each replica's two
stages move as one, and with tp = 2 x dp = 2 each replica's two tensor-parallel ranks do; fixed shares, and shares
moving with measured speed, equal single-process training on the union batch within 1e-5.

Under a pipeline every share is a multiple of microbatches x grad_accum (here 4), so each replica's schedule splits
it evenly; a schedule per batch size (parallel/layout.py, Pipelined) lets the sizes differ between replicas and
change. Under tensor parallelism both ranks of a replica compute the same samples (each holds half of every
layer), and the replica's speed is its slower rank's."""

from __future__ import annotations

import pytest
import share_workers as sw

from shoal.data import load
from shoal.distributed import shutdown
from shoal.models import build_model

pytestmark = pytest.mark.dist
EXACT = 1e-5
ADAMW = {"name": "adamw", "lr": 0.01}
CASES = {  # 300 digits, batches of 64, the short last one dropped (a pipeline splits every batch alike)
    "pp-shares-3-1": {"parallel": {"pp": 2, "batch_shares": [3, 1]}, "data": {"drop_last": True}, "optimizer": ADAMW},
    # replica 1 (ranks 1 and 3: rank = pp x 2 + dp) throttled to half speed; from 1:3 the shares move towards 2:1
    "pp-speed-moving": {"parallel": {"pp": 2, "balance": "speed", "batch_shares": [1, 3], "balance_threshold": 0.0},
                        "data": {"drop_last": True, "partition": "random"}, "optimizer": ADAMW},
    # rank = dp x 2 + tp: replica 0 is ranks 0 and 1, replica 1 ranks 2 and 3. Two hidden layers, so the auto plan
    # shards both (colwise then rowwise) and every rank holds a real half of the model
    "tp-shares-3-1": {"parallel": {"tp": 2, "batch_shares": [3, 1]}, "model": {"hidden": [32, 32]},
                      "train": {"grad_accum": 2, "clip_grad_norm": 0.5}, "optimizer": ADAMW},
    # replica 1 throttled on one of its ranks only (rank 3, THROTTLES): the replica still moves at that rank's pace
    "tp-speed-moving": {"parallel": {"tp": 2, "balance": "speed", "batch_shares": [1, 3], "balance_threshold": 0.0},
                        "model": {"hidden": [32, 32]}, "data": {"partition": "random"}, "optimizer": ADAMW},
}
THROTTLES = {"tp-shares-3-1": "3:2.0", "tp-speed-moving": "3:2.0"}  # the pipeline cases: the launch's ranks 1 and 3


def single_cases() -> list[tuple[str, dict]]:
    return [(name, {k: v for k, v in case.items() if k != "parallel"}) for name, case in CASES.items()]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    try:
        return sw.run_cases(str(tmp_path_factory.mktemp("single")), single_cases())
    finally:
        shutdown()


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return sw.launch_throttled({"SHOAL_TEST_SLOW_FACTOR": "1:2.0,3:2.0", "SHOAL_TEST_SAMPLE_S": "0.001"},
                               str(tmp_path_factory.mktemp("four")), list(CASES.items()), nproc=4, throttles=THROTTLES)


def initial_params(name: str) -> dict:
    cfg = sw.config(CASES[name])
    splits = load(cfg.data, cfg.seed)
    return build_model(cfg.model, splits.spec.input_shape, splits.spec.num_classes, cfg.seed).state_dict()


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("name", list(CASES))
def test_model_parallel_shares_equal_one_process(single, four, name):
    assert max_diff(four[0][name]["params"], single[name]["params"]) < EXACT
    assert max_diff(single[name]["params"], initial_params(name)) > 1e-2  # the weights really moved


def test_each_replica_computes_its_fixed_share_with_both_stages(four):
    per_rank = [four[r]["pp-shares-3-1"]["samples"] for r in range(4)]
    assert all(s == [48] * len(per_rank[0]) for s in (per_rank[0], per_rank[2]))  # replica 0: stages 0 and 1
    assert all(s == [16] * len(per_rank[0]) for s in (per_rank[1], per_rank[3]))  # replica 1


def test_each_replica_computes_its_fixed_share_on_both_tensor_parallel_ranks(four):
    per_rank = [four[r]["tp-shares-3-1"]["samples"] for r in range(4)]
    assert per_rank[0] == per_rank[1] and per_rank[2] == per_rank[3]  # a replica's two halves see the same samples
    full = [(a, b) for a, b in zip(per_rank[0], per_rank[2]) if a + b == 64]
    assert full and all(pair == (48, 16) for pair in full)  # 3:1 of every full batch (the short last one: 300 = 4 x 64 + 44)
    assert sum(per_rank[0]) + sum(per_rank[2]) == 300 * 2  # every sample once an epoch, over the two replicas


def test_measured_pipeline_shares_move_in_whole_units(four):
    records = four[0]["pp-speed-moving"]["balance"]
    assert records[0]["reason"] == "config" and records[0]["shares"] == [16, 48]
    assert any(r["reason"] == "measured" for r in records), records
    assert records[-1]["shares"][0] > records[-1]["shares"][1]  # towards the throttle's 2:1
    assert all(s % 4 == 0 for r in records for s in r["shares"])  # microbatches (2 x pp) x grad_accum
    samples = [four[r]["pp-speed-moving"]["samples"] for r in range(4)]
    assert samples[0] == samples[2] and samples[1] == samples[3]  # a replica's stages move as one
    assert len(set(zip(samples[0], samples[1]))) >= 2  # the replicas really computed the changing shares


def test_measured_tensor_parallel_shares_follow_the_slower_rank_of_a_replica(four):
    records = four[0]["tp-speed-moving"]["balance"]
    assert records[0]["reason"] == "config" and records[0]["shares"] == [16, 48]
    assert any(r["reason"] == "measured" for r in records), records
    assert records[-1]["shares"][0] > records[-1]["shares"][1]  # only rank 3 is slow, yet replica 1 got the smaller share
    samples = [four[r]["tp-speed-moving"]["samples"] for r in range(4)]
    assert samples[0] == samples[1] and samples[2] == samples[3]  # a replica's tensor-parallel ranks move as one
    assert len(set(zip(samples[0], samples[2]))) >= 3  # the replicas really computed the changing shares
