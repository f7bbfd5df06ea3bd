"""Uneven batch shares (fixed, and moving with measured speed) equal single-process training on the
union batch within 1e-5: under DDP with accumulation and clipping, and under FSDP2."""

from __future__ import annotations

import pytest
import share_workers as sw

from shoal.distributed import shutdown

pytestmark = pytest.mark.dist
EXACT = 1e-5


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    try:
        return sw.run_cases(str(tmp_path_factory.mktemp("single")), [(n, sw.single_overrides(n)) for n in sw.CASES])
    finally:
        shutdown()


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Rank 1 is a simulated device of half the speed (the test throttle), so measured shares have somewhere to go."""
    return sw.launch_throttled({"SHOAL_TEST_SLOW_FACTOR": "1:2.0", "SHOAL_TEST_SAMPLE_S": "0.001"},
                               str(tmp_path_factory.mktemp("two")), list(sw.CASES.items()), nproc=2)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("name", list(sw.CASES))
def test_uneven_shares_equal_one_process(single, two, name):
    assert max_diff(two[0][name]["params"], single[name]["params"]) < EXACT


@pytest.mark.parametrize("name,full", [("shares-24-8-accum-clip", [24, 8]), ("shares-3-1-adamw-cosine", [48, 16]),
                                        ("shares-3-1-fsdp", [48, 16])])
def test_each_rank_computes_its_fixed_share(two, name, full):
    per_rank = [two[r][name]["samples"] for r in (0, 1)]
    batch = sum(full)
    totals = [a + b for a, b in zip(*per_rank)]
    assert all(t in (batch, 300 % batch) for t in totals)  # whole global batches, and the epoch's short last one
    assert [[a, b] for a, b in zip(*per_rank) if a + b == batch] == [full] * (2 * (300 // batch))
    assert two[0][name]["balance"][0]["shares"] == full


def test_measured_shares_move_and_stay_exact(two):
    records = two[0]["speed-moving"]["balance"]
    assert records[0]["reason"] == "config" and records[0]["shares"] == [16, 48]
    assert any(r["reason"] == "measured" for r in records), records
    assert records[-1]["shares"][0] > records[-1]["shares"][1]  # towards the throttle's 2:1
    full = [(a, b) for a, b in zip(two[0]["speed-moving"]["samples"], two[1]["speed-moving"]["samples"]) if a + b == 64]
    assert full[0] == (16, 48) and len(set(full)) >= 2  # the ranks really computed the changing shares


def test_single_runs_trained(single):
    """Guard against a vacuous pass: every case moves the weights far beyond the tolerance."""
    for name in sw.CASES:
        assert max_diff(single[name]["params"], sw.initial_params(name)) > 1e-2, name
