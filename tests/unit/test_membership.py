"""The lines an elastic job prints when machines come and go (the namespace tests in tests/distributed/multinode/
show them end to end): who takes part after a new rendezvous round, a worker's failure without gloo's source path,
and the rule that calls a step a stall."""

from __future__ import annotations

import collections
from types import SimpleNamespace

from shoal.distributed.health import STALL_MIN_S, Health
from shoal.launch.restarts import describe, membership, root_failure


def test_membership_says_who_left_joined_or_came_back():
    assert membership((2, 4), (1, 2)).startswith("the job goes on without 1 node that left or cannot be reached: 1 node, 2 processes (were 2, 4)")
    assert membership((3, 3), (1, 1)).startswith("the job goes on without 2 nodes")
    assert membership((1, 1), (2, 2)) == "1 node joined: the job goes on with 2 nodes, 2 processes (were 1, 1)"
    assert membership((2, 2), (2, 2)) == "all 2 nodes met again: the job goes on with 2 processes"


def test_a_gloo_timeout_is_described_without_its_source_path():
    failure = SimpleNamespace(message={"message": "RuntimeError: [/__w/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] "
                                                  "Timed out waiting 30000ms for recv operation to complete\nmore"}, exitcode=1)
    assert describe(failure) == "RuntimeError: Timed out waiting 30000ms for recv operation to complete"
    assert describe(SimpleNamespace(message="", exitcode=-9)) == "killed by SIGKILL"


def test_the_killed_worker_is_named_not_its_peers_that_lost_it():
    peer = lambda t: SimpleNamespace(exitcode=1, timestamp=t, message="CollectiveTimeout: connection closed")  # noqa: E731
    failures = {0: peer(100), 1: peer(100), 3: SimpleNamespace(exitcode=-9, timestamp=101, message=""), 2: peer(99)}
    assert root_failure(failures)[0] == 3
    del failures[3]
    assert root_failure(failures)[0] == 2  # else the earliest


def stall_watch() -> tuple[Health, list[dict]]:
    logged: list[dict] = []
    h = Health.__new__(Health)  # only what the stall rule reads
    h.recent_s, h.log, h.timeout_s = collections.deque(maxlen=32), logged.append, 30.0
    h.env = SimpleNamespace(is_main=True)
    return h, logged


def test_a_step_far_longer_than_usual_is_a_stall_and_leaves_the_usual_alone(capsys):
    h, logged = stall_watch()
    for step, seconds in enumerate([0.05, 0.04, 0.06, 0.05, STALL_MIN_S + 8.0, 0.05], start=1):
        h._note_stall(step, seconds)
    assert [(r["kind"], r["step"]) for r in logged] == [("stall", 5)] and logged[0]["usual_s"] == 0.05
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stall: step 5 took 13.0 s, the usual 50 ms") and "without a restart" in err[0]
    assert 13.0 not in h.recent_s  # the stall does not raise what counts as usual


def test_slow_steps_are_not_stalls_when_they_are_the_usual_or_short():
    cases = [[0.05, 0.05, 0.05, STALL_MIN_S - 0.5],  # 90 x the usual, but under STALL_MIN_S
             [6.0, 6.0, 6.0, 7.0, 30.0],  # slow steps are this job's usual: 30 s is 5 x, not 20 x
             [60.0]]  # the first steps (warm-up) have nothing to compare with
    for times in cases:
        h, logged = stall_watch()
        for step, seconds in enumerate(times, start=1):
            h._note_stall(step, seconds)
        assert logged == [], times
