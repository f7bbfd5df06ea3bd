"""Clients due back: a batch waits for the clients of the batch just answered only when all are due back within
the deadline and sooner than a lone pass; a lone client, a late one and one never seen before are not waited for."""

from __future__ import annotations

import asyncio

from shoal.serve.batcher import Batcher, Work
from shoal.serve.returns import SLACK_S, Returns


def round_trip(returns: Returns, conns, pass_s: float, now: float, turnarounds) -> float:
    """Answer `conns` at `now` and have each come back after its turnaround; the time the last came back."""
    returns.answered(list(conns), pass_s, now)
    for conn, t in zip(conns, turnarounds):
        returns.back(conn, now + t)
    return now + max(turnarounds)


def test_waits_for_the_last_batch_when_all_are_due_before_the_deadline_and_a_pass():
    r = Returns()
    round_trip(r, ["a", "b", "c"], 0.010, 0.0, [0.001, 0.002, 0.003])  # turnarounds learned
    r.answered(["a", "b", "c"], 0.010, 1.0)
    r.back("a", 1.001)  # a is back: the batch holding it waits for b and c
    assert abs(r.expected_until(1.001, 1.010) - (1.0 + 2 * 0.003 + SLACK_S)) < 1e-9  # until c is late
    assert r.expected_until(1.001, 1.005) == 1.005  # never past the deadline
    assert r.expected_until(1.001, 1.0025) is None  # c is due after the deadline: not worth waiting for b alone
    r.back("b", 1.002)
    r.back("c", 1.003)
    assert r.expected_until(1.003, 1.008) is None  # everyone is back


def test_no_wait_when_a_pass_is_shorter_than_the_returns():
    r = Returns()
    round_trip(r, ["a", "b"], 0.0005, 0.0, [0.001, 0.004])  # passes of 0.5 ms: waiting 4 ms saves less than it idles
    r.answered(["a", "b"], 0.0005, 1.0)
    r.back("a", 1.001)
    assert r.expected_until(1.001, 1.1) is None


def test_a_lone_client_a_new_one_and_a_late_one_are_not_waited_for():
    r = Returns()
    round_trip(r, ["lone"], 0.010, 0.0, [0.001])
    r.answered(["lone"], 0.010, 1.0)
    r.back("lone", 1.001)
    assert r.expected_until(1.001, 1.006) is None  # nobody else
    r.answered(["new"], 0.010, 2.0)
    assert r.expected_until(2.0005, 2.005) is None  # its turnaround is unknown
    round_trip(r, ["x", "y"], 0.010, 3.0, [0.001, 0.001])
    r.answered(["x", "y"], 0.010, 4.0)
    r.back("x", 4.001)
    assert r.expected_until(4.001, 4.005) is not None
    assert r.expected_until(4.0031, 4.005) is None  # y is late by twice its turnaround (+ slack): given up


def test_forgotten_after_they_go_quiet():
    r = Returns()
    r.answered(["gone"], 0.010, 0.0)
    r.forget(100.0)
    assert r.answered_at == {} and r.turnaround == {}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_the_batcher_waits_for_a_client_due_back_and_not_for_one_that_is_not():
    """Two clients in a closed loop, back 1 ms and 10 ms after their answers, passes of 30 ms. Their first round
    trips split them (turnarounds unknown); once known, a batch waits for the other client and they share one
    pass again. Where a pass costs less than the wait (0.5 ms reported) they stay apart."""
    async def rounds(reported_pass_s: float) -> list[list[str]]:
        b = Batcher(max_batch=8, max_wait_s=1.0, max_queue=10)
        taken: list[list[str]] = []

        async def client(name: str, turnaround: float):
            for _ in range(4):
                b.arrive(name)
                await b.submit(Work("predict", name, conn=name), arrived=True)
                await asyncio.sleep(turnaround)

        async def driver():
            while sum(map(len, taken)) < 8:
                batch = await b.take()
                taken.append([w.payload for w in batch])
                await asyncio.sleep(0.03)  # the pass
                for w in batch:
                    w.future.set_result(None)
                b.answered(batch, reported_pass_s)

        await asyncio.gather(client("a", 0.001), client("b", 0.010), driver())
        return taken

    waited, not_waited = run(rounds(1.0)), run(rounds(0.0005))
    together = lambda batches: sum(sorted(batch) == ["a", "b"] for batch in batches[1:])  # noqa: E731
    assert waited[0] == ["a", "b"] and together(waited) >= 2, waited  # split once, then rejoined for good
    assert not_waited[0] == ["a", "b"] and together(not_waited) == 0, not_waited
