"""Quick jobs are claimed one batch ahead of the free slots (alchemy.worker.consumer,
PREFETCH_JOB_S): the jobs claimed ahead sit in the processing list, owned, and start as
slots free; a stop never starts them and returns them with the rest, unchanged."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from alchemy.worker.consumer import PREFETCH_PER_SLOT
from tests.conftest import queue_table, read_records, wait_for


async def test_jobs_claimed_ahead_wait_for_a_slot_and_a_stop_returns_them_unstarted(
    redis: Redis, prefix: str, make_config, run_worker
) -> None:
    config = make_config(queue_table("q", concurrency=2), worker={"shutdown_timeout": 10.0})
    producer = Producer(redis, prefix=prefix)
    keys = QueueKeys(prefix, "q")
    processing = keys.processing(config.worker.identity)
    quick = f"{prefix}:quick"
    for _ in range(20):  # the consumer learns that this queue's jobs are quick
        await producer.enqueue("q", {"record": quick})
    worker = run_worker(config)
    await wait_for(lambda: _count(redis, f"{quick}:done", 20))

    slow = f"{prefix}:slow"
    await redis.set(keys.paused, 1)  # all of them there before the next claim
    ahead = PREFETCH_PER_SLOT * 2
    count = 2 + ahead + 2
    ids = [await producer.enqueue("q", {"record": slow, "sleep": 1.0}) for _ in range(count)]
    await redis.delete(keys.paused)
    # Two run; PREFETCH_PER_SLOT times the concurrency more are claimed ahead, not started;
    # two wait.
    await wait_for(lambda: _count(redis, processing, 2 + ahead))
    await wait_for(lambda: _count(redis, slow, 2))
    assert await redis.llen(keys.wait) == 2
    assert await redis.llen(processing) == 2 + ahead

    worker.request_stop("test")
    await wait_for(lambda: _count(redis, f"{slow}:done", 2), within=10)
    await wait_for(lambda: _count(redis, keys.wait, count - 2), within=10)
    started = [entry["id"] for entry in await read_records(redis, slow)]
    assert started == ids[:2]  # the ones claimed ahead never started
    assert await redis.llen(processing) == 0
    waiting = [json.loads(item)["id"] for item in await redis.lrange(keys.wait, 0, -1)]
    assert sorted(waiting) == sorted(ids[2:])  # back unchanged: no attempt spent
    assert all(b'"_alchemy"' not in item for item in await redis.lrange(keys.wait, 0, -1))


async def _count(redis: Redis, key: str, n: int) -> bool:
    return await redis.llen(key) >= n
