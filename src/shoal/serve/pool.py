"""The replica processes and the loop that feeds each one batches.

Every replica has a driver task: take a batch, send it, wait on the event loop for the pipe to hold the answer.
When a replica dies the batch goes back to the front of the queue (another replica, or this one restarted,
answers it), the driver starts a new process, and the restart is counted: an accepted request is never
dropped because a replica went away.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from shoal.serve.batcher import Batcher, Work
from shoal.serve.metrics import Metrics
from shoal.serve.replica import pack, replica_main, unpack

log = logging.getLogger("shoal.serve")
MAX_ATTEMPTS = 3  # a request that has killed this many replicas is answered with an error, not retried forever


class ReplicaFailed(Exception):
    pass


class Replica:
    def __init__(self, index: int, source: str, threads: int, prepack: str = "auto"):
        self.index, self.source, self.threads, self.prepack = index, source, threads, prepack
        self.process: mp.Process | None = None
        self.conn = None
        self.ready = False
        self.restarts = 0

    def start(self) -> None:
        """Blocking: spawn the process and wait for its 'ready' (the model is loaded)."""
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=replica_main, args=(self.source, child, self.threads, self.prepack), daemon=True,
                                   name=f"shoal-replica-{self.index}")
        self.process.start()
        child.close()  # only the replica holds that end: its death reads as EOF here
        self.conn = parent
        if not parent.poll(300):
            raise ReplicaFailed(f"replica {self.index} did not load the model within 300 s")
        try:
            ready = parent.recv()
        except EOFError:
            raise ReplicaFailed(f"replica {self.index} exited while loading the model (exit code {self.process.exitcode})") from None
        if self.restarts == 0:  # the same line again after every restart says nothing new
            log.info("replica %d: %s", self.index, ready[2])
        self.ready = True

    async def roundtrip(self, message) -> dict:
        """One batch to the replica and its answer back, on the event loop: the pipe is watched for the answer
        (or for the end of file a dead replica leaves) instead of a thread blocking on it. Sending does not wait:
        the replica is waiting in recv for exactly this message."""
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        fd = self.conn.fileno()
        try:
            self.conn.send_bytes(pack(message))
            loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                loop.remove_reader(fd)
            kind, result = unpack(self.conn.recv_bytes())
        except (EOFError, OSError, BrokenPipeError):
            self.ready = False
            raise ReplicaFailed(f"replica {self.index} (pid {self.process.pid}) died") from None
        return result

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        try:
            self.conn.send_bytes(pack(None))
        except (OSError, BrokenPipeError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.ready = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class Pool:
    def __init__(self, source: str, replicas: int, batcher: Batcher, metrics: Metrics, threads: int = 0, prepack: str = "auto"):
        threads = threads or max((os.cpu_count() or 1) // replicas, 1)
        self.replicas = [Replica(i, source, threads, prepack) for i in range(replicas)]
        self.batcher, self.metrics = batcher, metrics
        self.tasks: list[asyncio.Task] = []
        # starting and stopping replicas block (spawn, wait for the model to load): a thread each
        self.threads = ThreadPoolExecutor(max_workers=replicas + 1, thread_name_prefix="shoal-replica")

    @property
    def ready(self) -> int:
        return sum(r.ready for r in self.replicas)

    async def start(self) -> None:
        """Start every replica (in parallel) and their drivers; returns once all are loaded."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.threads, r.start) for r in self.replicas))
        self.metrics.replicas_ready.set(self.ready)
        self.tasks = [asyncio.create_task(self._drive(r)) for r in self.replicas]

    async def stop(self) -> None:
        await self.batcher.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.threads, r.stop) for r in self.replicas))
        self.threads.shutdown(wait=False)
        self.metrics.replicas_ready.set(0)

    async def _drive(self, replica: Replica) -> None:
        while True:
            batch = await self.batcher.take()
            if batch is None:
                return
            self.metrics.queue_depth.set(len(self.batcher))
            batch = [w for w in batch if not w.future.done()]  # callers that went away
            if not batch:
                continue
            started = time.perf_counter()
            try:
                result = await replica.roundtrip(_message(batch))
            except ReplicaFailed as err:
                await self._recover(replica, batch, err)
                continue
            _answer(batch, result)
            if batch[0].kind == "predict":
                self.batcher.answered(batch, time.perf_counter() - started)
                self.metrics.batch_size.observe(sum(w.size for w in batch))

    async def _recover(self, replica: Replica, batch: list[Work], err: ReplicaFailed) -> None:
        log.warning("%s; retrying its %d request(s) and restarting it", err, len(batch))
        self.metrics.replicas_ready.set(self.ready)
        for w in batch:
            w.attempts += 1
        retry = [w for w in batch if w.attempts < MAX_ATTEMPTS]
        for w in batch:
            if w.attempts >= MAX_ATTEMPTS and not w.future.done():
                w.future.set_exception(ReplicaFailed(f"{MAX_ATTEMPTS} replicas died on this request"))
        if retry:
            self.metrics.retried.inc(len(retry))
            await self.batcher.retry(retry)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        while True:
            replica.stop(timeout=1.0)
            try:
                await loop.run_in_executor(self.threads, replica.start)
                break
            except ReplicaFailed as again:
                log.warning("%s; trying again", again)
                await asyncio.sleep(1.0)
        replica.restarts += 1
        self.metrics.restarts.inc()
        self.metrics.replicas_ready.set(self.ready)
        log.warning("replica %d restarted (pid %d) in %.1f s", replica.index, replica.pid, time.perf_counter() - started)


def _message(batch: list[Work]):
    if batch[0].kind == "predict":
        if isinstance(batch[0].payload, dict):  # named inputs (hf: models): each column of every request
            return "predict", {k: np.concatenate([w.payload[k] for w in batch]) for k in batch[0].payload}
        return "predict", np.concatenate([w.payload for w in batch])
    return batch[0].kind, batch[0].payload


def _answer(batch: list[Work], result: dict) -> None:
    if "error" in result:
        for w in batch:
            if not w.future.done():
                w.future.set_exception(ReplicaFailed(result["error"]))
        return
    if batch[0].kind != "predict":
        if not batch[0].future.done():
            batch[0].future.set_result(result)
        return
    start = 0
    for w in batch:
        part = {k: v[start : start + w.size] for k, v in result.items()}
        start += w.size
        if not w.future.done():
            w.future.set_result(part)
