from __future__ import annotations

import json

from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from tests.conftest import queue_table, wait_for


async def test_jobs_run_and_are_acknowledged(redis: Redis, prefix: str, make_config, run_worker):
    config = make_config(queue_table("q", concurrency=4))
    producer = Producer(redis, prefix=prefix)
    ids = [await producer.enqueue("q", {"record": f"{prefix}:seen", "n": i}) for i in range(20)]
    run_worker(config)
    await wait_for(lambda: _count(redis, f"{prefix}:seen:done", 20))
    done = [json.loads(x)["id"] for x in await redis.lrange(f"{prefix}:seen:done", 0, -1)]
    assert sorted(done) == sorted(ids)
    keys = QueueKeys(prefix, "q")
    await wait_for(lambda: _empty(redis, keys.processing(config.worker.identity)))


async def _count(redis: Redis, key: str, n: int) -> bool:
    return await redis.llen(key) >= n


async def _empty(redis: Redis, key: str) -> bool:
    return await redis.llen(key) == 0
