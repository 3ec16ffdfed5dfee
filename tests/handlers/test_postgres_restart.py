"""PostgreSQL stops hard and comes back while content jobs are running: every job ends up
done exactly once, held while the database is away, nothing lost, no duplicate rows, and
no provider call paid twice: a reply that arrived while PostgreSQL was away (kept in
Redis), or whose result could not be committed (kept in the ledger), is reused.

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
from alchemy.worker.observer import JobEvent, Transition
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


class HeldJobs:
    """The jobs held because a dependency was down (a job observer)."""

    def __init__(self) -> None:
        self.job_ids: set[str] = set()

    def on_job(self, event: JobEvent) -> None:
        if event.transition is Transition.HELD and event.job_id:
            self.job_ids.add(event.job_id)

    def on_held_back(self, queue: str, why: str, wait_ms: int) -> None:
        pass


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
        held = HeldJobs()
        run_worker(config, observers=[held])
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
        assert held.job_ids, "no job met the outage: it came too late to test anything"
        assert fake_ai.count("messages") == JOBS  # one paid call per job, outage or not
        assert await pool.fetchval("SELECT count(*) FROM provider_calls") == JOBS
        assert await redis.llen(QueueKeys(prefix, "content-generation").dead) == 0
        assert down_for >= 1.0
    finally:
        await pool.close()


async def one_content_job(
    cluster: ThrowawayCluster,
    pool: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    make_app_config: Any,
    run_worker: Any,
) -> tuple[Any, HeldJobs]:
    """A content row, a worker on the cluster, and its job pushed."""
    brand_id = await create_brand(pool)
    idea_id = await create_idea(pool, brand_id)
    row_id = await create_request(pool, brand_id, idea_id)
    held = HeldJobs()
    run_worker(make_app_config(database={"url": cluster.url}), observers=[held])
    await push(redis, prefix, "content-generation", "pg-once", content_queue_id=str(row_id))
    return row_id, held


async def stashed(redis: Redis, prefix: str) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=f"{prefix}:paid:*")]


async def reply_reused_once(pool: asyncpg.Pool, row_id: Any, fake_ai: FakeAI) -> None:
    async def completed() -> bool:
        query = f"SELECT count(*) FROM content_queue WHERE id = '{row_id}' AND status = 'completed'"
        return await count(pool, query) == 1

    await wait_for(completed, within=30, interval=0.1)
    assert fake_ai.count("messages") == 1
    assert await pool.fetchval("SELECT count(*) FROM contents") == 1
    [call] = await pool.fetch("SELECT * FROM provider_calls")
    assert (call["outcome"], call["consumed_by"]) == ("ok", "pg-once")
    assert str(call["id"]) == fake_ai.call_ids()[0]


@pytest.mark.timeout(60)
async def test_a_reply_that_arrives_while_postgres_is_away_is_kept_and_reused(
    cluster: ThrowawayCluster,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    """PostgreSQL stops while the paid request is at the provider: the reply cannot reach
    the ledger, so it waits in Redis; the job is held; once the server is back the next run
    writes the reply to the ledger and uses it. One paid call."""
    restarted: list[asyncio.Task[None]] = []

    async def restart_later() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.start)

    async def stop_postgres(call: Any) -> None:
        await asyncio.to_thread(cluster.stop, "immediate")
        restarted.append(asyncio.create_task(restart_later()))

    pool = await asyncpg.create_pool(cluster.url, min_size=1, max_size=2, init=init_connection)
    try:
        fake_ai.on_call = stop_postgres
        row_id, held = await one_content_job(
            cluster, pool, redis, prefix, make_app_config, run_worker
        )
        await wait_for(lambda: restarted, within=15)
        await wait_for(lambda: stashed(redis, prefix), within=5)  # before the server is back
        await reply_reused_once(pool, row_id, fake_ai)
        assert held.job_ids == {"pg-once"}
        assert await stashed(redis, prefix) == []  # written to the ledger, then deleted
    finally:
        fake_ai.on_call = None
        await asyncio.gather(*restarted)
        await pool.close()


@pytest.mark.timeout(60)
async def test_a_reply_whose_result_could_not_be_stored_is_reused(
    cluster: ThrowawayCluster,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    """The paid reply reaches the ledger, then PostgreSQL stops while the content is being
    written (the write is made to wait on a lock first, so the stop lands there): the next
    run reuses the ledger's reply. One paid call."""
    pool = await asyncpg.create_pool(cluster.url, min_size=1, max_size=2, init=init_connection)
    blocker = await asyncpg.connect(cluster.url)
    locked = asyncio.Event()

    async def lock_contents(call: Any) -> None:
        await blocker.execute("BEGIN; LOCK TABLE contents IN ACCESS EXCLUSIVE MODE")
        locked.set()

    try:
        fake_ai.on_call = lock_contents
        row_id, held = await one_content_job(
            cluster, pool, redis, prefix, make_app_config, run_worker
        )
        await asyncio.wait_for(locked.wait(), 15)
        fake_ai.on_call = None
        ok = "SELECT count(*) FROM provider_calls WHERE outcome = 'ok'"
        await wait_for(lambda: count(pool, ok), within=10)
        waiting = (
            "SELECT count(*) FROM pg_locks WHERE relation = 'contents'::regclass AND NOT granted"
        )
        await wait_for(lambda: count(pool, waiting), within=10)  # the INSERT waits on the lock
        await asyncio.to_thread(cluster.stop, "immediate")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(cluster.start)
        await reply_reused_once(pool, row_id, fake_ai)
        assert held.job_ids == {"pg-once"}
    finally:
        fake_ai.on_call = None
        await blocker.close(timeout=1)
        await pool.close()
