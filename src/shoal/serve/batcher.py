"""Dynamic batching with back-pressure: accepted requests wait in a bounded queue, and each free replica takes
the oldest one plus whatever else is queued, up to `max_batch` samples. It waits for more (at most `max_wait_s`
once a replica is free) only while requests are arriving (read by the server but not yet checked and
queued: `arrive`) or clients it just answered are due back (shoal.serve.returns). A request that finds nobody
else on the way goes at once, so batching costs a lone request no latency, while requests that come together
still share a forward pass. A full queue refuses at once (the caller answers 503), and a batch
whose replica died goes back to the front to be retried."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from shoal.serve.returns import Returns


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


@dataclass
class Work:
    kind: str  # predict | generate
    payload: Any  # predict: an array of samples; generate: the request's fields
    size: int = 1  # samples
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    attempts: int = 0
    conn: Any = None  # the client's connection (host, port), to expect it back once answered


class Batcher:
    def __init__(self, max_batch: int, max_wait_s: float, max_queue: int):
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.items: deque[Work] = deque()
        self.cond = asyncio.Condition()
        self.closed = False
        self.arriving = 0  # requests the server is reading or checking, not yet queued
        self.returns = Returns()

    def arrive(self, conn=None) -> None:
        """A request is on its way in (on connection `conn`): a batch being formed may wait for it."""
        self.arriving += 1
        self.returns.back(conn)

    def answered(self, batch: list[Work], pass_s: float) -> None:
        """The batch's answers are going out (its pass took `pass_s`): its clients may come back soon
        (shoal.serve.returns). Called by the replica's driver before it takes the next batch."""
        self.returns.answered([w.conn for w in batch], pass_s)

    async def leave(self) -> None:
        """A request that arrived will not be queued (refused, or queued by submit): stop waiting for it."""
        self.arriving -= 1
        if not self.arriving:
            async with self.cond:
                self.cond.notify_all()

    def __len__(self) -> int:
        return len(self.items)

    async def submit(self, work: Work, arrived: bool = False) -> Any:
        """Queue `work` (or raise QueueFull) and wait for its result; `arrived`: it was counted by `arrive`."""
        if len(self.items) >= self.max_queue:
            if arrived:
                await self.leave()
            raise QueueFull
        async with self.cond:
            self.items.append(work)
            if arrived:
                self.arriving -= 1
            self.cond.notify_all()
        return await work.future

    async def retry(self, batch: list[Work]) -> None:
        async with self.cond:
            self.items.extendleft(reversed(batch))
            self.cond.notify_all()

    async def close(self) -> None:
        async with self.cond:
            self.closed = True
            self.cond.notify_all()

    async def take(self) -> list[Work] | None:
        """The next batch (None once closed and empty): generation requests go alone, predictions together."""
        async with self.cond:
            await self.cond.wait_for(lambda: self.items or self.closed)
            if not self.items:
                return None
            batch = [self.items.popleft()]
            if batch[0].kind != "predict":
                return batch
            size, deadline = batch[0].size, time.monotonic() + self.max_wait_s  # from when a replica is free
            while size < self.max_batch:
                if self.items:
                    nxt = self.items[0]
                    if nxt.kind != "predict" or size + nxt.size > self.max_batch:
                        break
                    batch.append(self.items.popleft())
                    size += nxt.size
                    continue
                now = time.monotonic()
                if now >= deadline or self.closed:
                    break
                arriving = self.arriving > 0
                until = deadline if arriving else self.returns.expected_until(now, deadline)
                if until is None or until <= now:
                    break
                try:  # woken by a request queued, or by the last one on its way being refused
                    await asyncio.wait_for(self.cond.wait_for(lambda was=arriving: self.items or self.closed or (was and not self.arriving)),
                                           until - now)
                except TimeoutError:
                    continue  # a client expected back is late: look again (the deadline ends it)
            return batch
