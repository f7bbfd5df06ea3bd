"""Dynamic batching with back-pressure: accepted requests wait in a bounded queue, and each free replica takes
the oldest one plus whatever else is queued, up to `max_batch` samples. It waits for more (at most `max_wait_s`)
only while requests are arriving: read by the server but not yet checked and queued (`arrive`). A request that
finds nobody else on the way goes at once, so batching costs a lone request no latency, while requests that
come together still share a forward pass. A full queue refuses at once (the caller answers 503), and a batch
whose replica died goes back to the front to be retried."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


@dataclass
class Work:
    kind: str  # predict | generate
    payload: Any  # predict: an array of samples; generate: the request's fields
    size: int = 1  # samples
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    attempts: int = 0


class Batcher:
    def __init__(self, max_batch: int, max_wait_s: float, max_queue: int):
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.items: deque[Work] = deque()
        self.cond = asyncio.Condition()
        self.closed = False
        self.arriving = 0  # requests the server is reading or checking, not yet queued

    def arrive(self) -> None:
        """A request is on its way in: a batch being formed may wait for it."""
        self.arriving += 1

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
        loop = asyncio.get_running_loop()
        async with self.cond:
            await self.cond.wait_for(lambda: self.items or self.closed)
            if not self.items:
                return None
            batch = [self.items.popleft()]
            if batch[0].kind != "predict":
                return batch
            size, deadline = batch[0].size, loop.time() + self.max_wait_s
            while size < self.max_batch:
                if self.items:
                    nxt = self.items[0]
                    if nxt.kind != "predict" or size + nxt.size > self.max_batch:
                        break
                    batch.append(self.items.popleft())
                    size += nxt.size
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or self.closed or not self.arriving:
                    break
                try:
                    await asyncio.wait_for(self.cond.wait_for(lambda: self.items or self.closed or not self.arriving), remaining)
                except TimeoutError:
                    break
            return batch
