"""PostgreSQL stops hard and comes back while content jobs are running: every job ends up
done exactly once, retried through the queue, nothing lost and no duplicate rows.

Runs against a throwaway cluster of its own (never the machine's PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from alchemy.db import init_connection
from alchemy.db.migrate import migrate_url
from alchemy.queue.keys import QueueKeys
from tests.conftest import wait_for
from tests.fakes.ai_server import FakeAI, Reply
from tests.fakes.postgres import ThrowawayCluster
from tests.handlers.support import CONTENT_REPLY, create_brand, create_idea, create_request, push

JOBS = 8


@pytest.fixture
async def cluster() -> AsyncIterator[ThrowawayCluster]:
    own = ThrowawayCluster()
    try:
        await asyncio.to_thread(own.init)
        await asyncio.to_thread(own.start)
        await migrate_url(own.url)
        yield own
    finally:
        await asyncio.to_thread(own.destroy)


async def count(pool: asyncpg.Pool, query: str) -> int:
    try:
        return int(await pool.fetchval(query))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return -1  # the server is away; ask again


@pytest.mark.timeout(90)
async def test_jobs_survive_a_postgres_restart_without_duplicates(
    cluster: ThrowawayCluster,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    pool = await asyncpg.create_pool(cluster.url, min_size=1, max_size=2, init=init_connection)
    try:
        brand_id = await create_brand(pool)
        idea_id = await create_idea(pool, brand_id)
        rows = [await create_request(pool, brand_id, idea_id) for _ in range(JOBS)]
        fake_ai.script("messages", *[Reply.slow(0.4, Reply.good(CONTENT_REPLY))] * (JOBS * 3))
        config = make_app_config(
            database={"url": cluster.url},
            queues={
                "concurrency": 2,
                "max_attempts": 10,
                "backoff_initial": 0.2,
                "backoff_max": 0.5,
            },
        )
        run_worker(config)
        for n, row_id in enumerate(rows):
            await push(redis, prefix, "content-generation", f"pg-{n}", content_queue_id=str(row_id))

        # Some content is saved and more is being written: stop the server hard.
        await wait_for(lambda: count(pool, "SELECT count(*) FROM contents"), within=20)
        stopped_at = time.monotonic()
        await asyncio.to_thread(cluster.stop, "immediate")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.start)
        down_for = time.monotonic() - stopped_at

        async def all_done() -> bool:
            return (
                await count(pool, "SELECT count(*) FROM content_queue WHERE status = 'completed'")
                == JOBS
            )

        await wait_for(all_done, within=40, interval=0.1)
        contents = await pool.fetch("SELECT content_queue_id, job_id FROM contents")
        assert len(contents) == JOBS
        assert {c["content_queue_id"] for c in contents} == set(rows)
        assert {c["job_id"] for c in contents} == {f"pg-{n}" for n in range(JOBS)}
        attempts = [r["attempts"] for r in await pool.fetch("SELECT attempts FROM content_queue")]
        assert max(attempts) >= 2, "no job met the outage: it came too late to test anything"
        assert await redis.llen(QueueKeys(prefix, "content-generation").dead) == 0
        assert down_for >= 1.0
    finally:
        await pool.close()
