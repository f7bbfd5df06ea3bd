"""parallel.balance = "speed" with rank 1 throttled to half speed (SHOAL_TEST_SLOW_FACTOR) settles near 2:1,
and SIGKILL restarts with batch shares: bit-identical with fixed shares; with measured shares the checkpoint's
shares come back and, without dropout, the result agrees to rounding (bit-identical too whenever both runs chose
the same shares)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from job_files import digits_mlp
from runs import records, shoal_train, weights

pytestmark = pytest.mark.dist

# 300 digits, batches of 60: 5 steps an epoch; a 2:1 split of 60 is 40:20 exactly
JOB = digits_mlp("balance", """\
[train]
global_batch_size = 60
steps = 16
log_every = 2
[checkpoint]
every = 4
[parallel]
batch_shares = [1, 1]    # start equal: the shares must come from measurement
""", seed=2).replace("hidden = [16]\n", "hidden = [16]\ndropout = 0.2\n")  # RNG state must survive the restart too
SLOW = {"SHOAL_TEST_SLOW_FACTOR": "1:2.0", "SHOAL_TEST_SAMPLE_S": "0.001"}
# no dropout with measured shares: a rank draws the masks of the samples it computes, so another dealing (a restarted
# run's other decision) would train on other masks; without per-rank randomness it differs only by rounding
SPEED = ["--set", "parallel.balance='speed'", "--set", "parallel.balance_threshold=0.02", "--set", "model.dropout=0.0"]
FIXED = ["--set", "parallel.batch_shares=[3,1]"]


def within_10_percent_of_2_to_1(shares: list[int]) -> bool:
    return abs(shares[0] / shares[1] / 2.0 - 1.0) <= 0.10


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("balance") / "job.toml"
    path.write_text(JOB)
    return path


@pytest.fixture(scope="module")
def speed_reference(job) -> tuple[Path, str]:
    out = job.parent / "ref-speed"
    proc = shoal_train(job, out, "--nproc", "2", *SPEED, env=SLOW)
    return out, proc.stderr


def test_measured_balance_settles_near_the_2_to_1_speed_ratio(speed_reference):
    out, stderr = speed_reference
    changes = records(out, "balance")
    assert changes[0]["reason"] == "config" and changes[0]["shares"] == [30, 30]
    measured = [r for r in changes if r["reason"] == "measured"]
    assert measured and measured[0]["step"] == 2, changes  # the first log window already moves the shares
    assert within_10_percent_of_2_to_1(changes[-1]["shares"]), changes
    assert all(set(r) == {"kind", "step", "shares", "speeds", "reason", "unix_time"} for r in changes)
    assert f"balance @ step 2: shares {measured[0]['shares']} of 60 samples (measured" in stderr


def test_the_probe_alone_lands_near_2_to_1(job, tmp_path):
    out = tmp_path / "probe"
    shoal_train(job, out, "--nproc", "2", "--set", "parallel.balance='speed'", "--set", "parallel.batch_shares=[]",
                "--set", "train.steps=1", env=SLOW)
    first = records(out, "balance")[0]
    assert first["reason"] == "probe" and first["step"] == 0 and within_10_percent_of_2_to_1(first["shares"]), first


@pytest.fixture(scope="module")
def fixed_reference(job) -> Path:
    out = job.parent / "ref-fixed"
    shoal_train(job, out, "--nproc", "2", *FIXED, env=SLOW)
    return out


def test_killed_run_with_fixed_shares_ends_bit_identical(job, fixed_reference, tmp_path):
    ref, out = fixed_reference, tmp_path / "killed"
    shoal_train(job, out, "--nproc", "2", "--max-restarts", "1", *FIXED, env={**SLOW, "SHOAL_TEST_KILL": "1:6"})
    assert records(out, "resume")[0]["step"] == 4
    a, b = weights(ref), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in records(out, "train")] == list(range(2, 17, 2))


def test_killed_run_with_measured_shares_restores_them(job, speed_reference, tmp_path):
    out = tmp_path / "killed"
    shoal_train(job, out, "--nproc", "2", "--max-restarts", "1", *SPEED, env={**SLOW, "SHOAL_TEST_KILL": "1:6"})
    resume = records(out, "resume")[0]
    assert resume["step"] == 4 and "balance" in resume["parts"]
    changes = records(out, "balance")
    restored = next(r for r in changes if r["reason"] == "resume")
    before = [r for r in changes[: changes.index(restored)] if r["step"] <= 4]  # the first attempt, up to the checkpoint
    assert restored["step"] == 4 and restored["shares"] == before[-1]["shares"]  # (the estimate's round trip: a unit test)
    assert restored["shares"] != [30, 30]  # measured shares came back, not the starting ones
    ref, got = weights(speed_reference[0]), weights(out)
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) < 1e-5  # the same batches, dealt by other shares maybe
    shares_of = lambda rs: [(r["step"], r["shares"]) for r in rs if r["reason"] != "resume"]
    after = [r for r in changes[changes.index(restored) + 1 :]]
    ref_changes = records(speed_reference[0], "balance")
    if shares_of(ref_changes) == shares_of(before + after):  # the same decisions: then the same bits
        assert all(torch.equal(ref[k], got[k]) for k in ref)
