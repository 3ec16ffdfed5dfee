"""``[worker] event_loop``: ``run`` runs on uvloop by default and on the standard loop when
asked, and does the same work on either."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from tests.conftest import queue_table, wait_for, wait_started


@pytest.mark.parametrize(("configured", "expected"), [(None, "uvloop"), ("asyncio", "asyncio")])
async def test_the_worker_runs_its_jobs_on_the_configured_loop(
    redis: Redis, prefix: str, spawn_worker: Any, configured: str | None, expected: str
) -> None:
    worker = {} if configured is None else {"event_loop": configured}
    process = spawn_worker(queue_table("q"), worker=worker)
    await wait_started(process)
    started = [e for e in process.events() if e.get("event") == "worker_started"]
    assert started[0]["event_loop"] == expected

    producer = Producer(redis, prefix=prefix)
    ids = [await producer.enqueue("q", {"n": n}, id=f"loop-{n}") for n in range(20)]

    def finished() -> list[str]:
        return [
            e["job_id"]
            for e in process.events()
            if e.get("event") == "job_finished" and e.get("outcome") == "completed"
        ]

    await wait_for(lambda: len(finished()) == len(ids), within=15)
    assert sorted(finished()) == sorted(ids)
    keys = QueueKeys(prefix, "q")
    processing = keys.processing(started[0]["worker"])

    async def acknowledged() -> bool:
        return await redis.llen(keys.wait) == 0 and await redis.llen(processing) == 0

    assert await wait_for(acknowledged, within=10)
