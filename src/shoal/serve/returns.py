"""Whether a batch should wait for the clients of the batch just answered: they are due back within a pass.

A client that sends its next request as soon as its last is answered (a batch job with N workers, a load test)
comes back a fraction of a millisecond to a few milliseconds after its answer. Without knowing that, a free
replica takes the first request to come back alone and the others a pass later: eight such clients on the
3 x 4096 MLP settle into batches of 1 and 7, two passes (8 + 11.5 ms) where one pass of 8 (11.5 ms) would do.

Each connection's turnaround, from its answer to its next request, is learned from its previous round trip. A
batch waits for the clients of the last batch answered only when all of them are due back before its deadline
and sooner than a lone pass takes (the shortest recent pass): waiting idles the replica for that long and saves
one pass. Where the answers of many clients take longer to go out and come back than a pass (32 clients), the
batches stay apart and one is computed while the other's answers travel. A lone client (nobody else expected)
and requests paced by the clock (turnarounds longer than the wait) never wait; a client that does not come back
is given up on after twice its turnaround.
"""

from __future__ import annotations

import time
from collections import deque

SLACK_S = 0.001  # a client counts as late (and is no longer waited for) after twice its turnaround plus this
STALE_S = 10.0  # connections not back within this are forgotten (closed, or idle)
PASSES = 32  # the shortest of this many recent passes stands for a lone pass's cost


class Returns:
    def __init__(self):
        self.answered_at: dict[object, float] = {}  # connection -> when its last answer went out (not back yet)
        self.turnaround: dict[object, float] = {}  # connection -> seconds from its last answer to its next request
        self.group: list[object] = []  # the connections of the last batch answered
        self.passes: deque[float] = deque(maxlen=PASSES)
        self.answers = 0

    def answered(self, conns: list, pass_s: float, now: float | None = None) -> None:
        """A batch's answers are going out (its pass took `pass_s`)."""
        now = time.monotonic() if now is None else now
        self.passes.append(pass_s)
        self.group = [c for c in conns if c is not None]
        for conn in self.group:
            self.answered_at[conn] = now
        self.answers += len(self.group)
        if self.answers >= 1024:
            self.answers = 0
            self.forget(now)

    def back(self, conn, now: float | None = None) -> None:
        """A request arrived on `conn`: learn its turnaround."""
        if conn is None:
            return
        now = time.monotonic() if now is None else now
        answered = self.answered_at.pop(conn, None)
        if answered is not None:
            self.turnaround[conn] = now - answered

    def forget(self, now: float) -> None:
        for conn in [c for c, t in self.answered_at.items() if now - t > STALE_S]:
            del self.answered_at[conn]
            self.turnaround.pop(conn, None)

    def expected_until(self, now: float, deadline: float) -> float | None:
        """Until when a batch should wait for the last batch's clients (None: not worth it, or nobody due)."""
        limit = min(deadline, now + min(self.passes)) if self.passes else deadline
        due, late = [], []
        for conn in self.group:
            answered, turnaround = self.answered_at.get(conn), self.turnaround.get(conn)
            if answered is None or turnaround is None:  # back already, or its first round trip: nothing known
                continue
            if answered + 2 * turnaround + SLACK_S > now:  # a late one (gone, or slower than it was) is given up on
                due.append(answered + turnaround)
                late.append(answered + 2 * turnaround + SLACK_S)
        if not due or max(due) > limit:
            return None
        return min(max(late), limit)
