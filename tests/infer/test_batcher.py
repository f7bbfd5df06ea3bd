"""The dynamic batcher: batches up to max_batch samples, generation alone, a full queue refuses, retries go first."""

from __future__ import annotations

import asyncio

import pytest

from shoal.serve.batcher import Batcher, QueueFull, Work


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_waiting_requests_form_batches_of_at_most_max_batch_samples():
    async def go():
        b = Batcher(max_batch=5, max_wait_s=0.01, max_queue=10)
        works = [Work("predict", i, size) for i, size in enumerate([2, 2, 2, 1, 3])]
        tasks = [asyncio.create_task(b.submit(w)) for w in works]
        await asyncio.sleep(0)
        first, second = await b.take(), await b.take()
        for w in works:
            w.future.set_result(w.payload)
        await asyncio.gather(*tasks)
        return [w.payload for w in first], [w.payload for w in second]

    assert run(go()) == ([0, 1], [2, 3])  # 2+2 (a third 2 would make 6); then 2+1 (3 more would make 6)


def test_generation_goes_alone_and_a_lone_request_waits_only_max_wait():
    async def go():
        b = Batcher(max_batch=8, max_wait_s=0.01, max_queue=10)
        g, p = Work("generate", "g"), Work("predict", "p")
        tasks = [asyncio.create_task(b.submit(w)) for w in (g, p)]
        await asyncio.sleep(0)
        batches = [await b.take(), await b.take()]
        for w in (g, p):
            w.future.set_result(None)
        await asyncio.gather(*tasks)
        return [[w.payload for w in batch] for batch in batches]

    assert run(go()) == [["g"], ["p"]]


def test_a_full_queue_refuses_and_a_retried_batch_goes_to_the_front():
    async def go():
        b = Batcher(max_batch=1, max_wait_s=0.0, max_queue=2)
        works = [Work("predict", i) for i in range(3)]
        tasks = [asyncio.create_task(b.submit(w)) for w in works]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await tasks[2]
        taken = await b.take()
        await b.retry(taken)
        again = await b.take()
        await b.close()
        for w in works[:2]:
            w.future.set_result(None)
        await asyncio.gather(*tasks[:2])
        return taken[0].payload, again[0].payload, await b.take() is not None

    assert run(go()) == (0, 0, True)  # after close, what is queued is still handed out


def test_a_batch_waits_only_while_requests_are_arriving():
    """One request queued, another being read: the batch waits for it (not the whole max_wait); with nothing on
    the way a lone request goes at once."""
    async def go():
        b = Batcher(max_batch=8, max_wait_s=5.0, max_queue=10)
        loop = asyncio.get_running_loop()
        lone = Work("predict", "lone")
        task = asyncio.create_task(b.submit(lone))
        await asyncio.sleep(0)
        started = loop.time()
        alone = await b.take()
        waited_alone = loop.time() - started
        first, second = Work("predict", "a"), Work("predict", "b")
        b.arrive()  # "b" is being read and checked
        tasks = [asyncio.create_task(b.submit(first))]
        taking = asyncio.create_task(b.take())
        await asyncio.sleep(0.05)  # the batch holds "a" and waits, for "b" is on its way
        tasks.append(asyncio.create_task(b.submit(second, arrived=True)))
        taken = await taking
        waited = loop.time() - started
        for w in (lone, first, second):
            w.future.set_result(None)
        await asyncio.gather(task, *tasks)
        return [w.payload for w in alone], waited_alone, [w.payload for w in taken], waited, b.arriving

    alone, waited_alone, taken, waited, arriving = run(go())
    assert alone == ["lone"] and waited_alone < 1.0 and taken == ["a", "b"] and waited < 1.0 and arriving == 0
