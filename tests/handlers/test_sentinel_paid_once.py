"""Issue 10, acceptance 4 (the paid half): content jobs re-delivered by a Sentinel failover
cause no second paid call.

Two workers run the real content handler against the fake AI (every reply takes 0.3 s, so
calls are in flight when the master dies) and the test database, on a master watched by
Sentinel. To make the failover lose writes for sure, the replica is stopped (SIGSTOP) and
the master given 16 MB to replicate (more than the replica's socket buffers take), so
what the workers do in the next half second stays in the master's output buffer; then the
master is killed and the replica let go: it is promoted without that half second. Jobs
taken then are back in the wait list (and run again, possibly while their first run still
waits for its paid reply), and jobs finished then are back in a processing list (put back
by the reconcile and run again). The fake AI must still be called once per job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections import Counter
from typing import Any

import asyncpg

from alchemy.config import Config
from alchemy.queue.producer import Producer
from alchemy.worker.connections import RedisClients
from alchemy.worker.observer import JobEvent, Transition
from tests.conftest import wait_for
from tests.fakes.ai_server import FakeAI, Reply
from tests.fakes.redis_topologies import MASTER_NAME, LocalSentinel
from tests.handlers.support import CONTENT_REPLY, create_brand, create_idea, create_request

Q = "content-generation"
JOBS = 60
KILL_AT = 15  # rows completed when the failover begins


class Starts:
    """An observer counting the starts of each job."""

    def __init__(self) -> None:
        self.by_id: Counter[str] = Counter()

    def on_job(self, event: JobEvent) -> None:
        if event.transition is Transition.STARTED and event.job_id:
            self.by_id[event.job_id] += 1

    def on_held_back(self, queue: str, why: str, wait_ms: int) -> None:
        return None


def on_sentinel(config: Config, sentinel: LocalSentinel, name: str) -> Config:
    redis = dataclasses.replace(
        config.redis,
        topology="sentinel",
        sentinels=tuple(sentinel.addresses),
        sentinel_master=MASTER_NAME,
        socket_timeout=2.0,
    )
    worker = dataclasses.replace(config.worker, name=name, reconcile_interval=3.5)
    queues = tuple(dataclasses.replace(q, concurrency=4) for q in config.queues)
    return dataclasses.replace(config, redis=redis, worker=worker, queues=queues)


def lose_the_last_writes(sentinel: LocalSentinel, junk_key: str) -> None:
    """Stop the replica for 0.5 s (less than down-after: it stays eligible) behind 16 MB of
    replication, kill the master meanwhile, then let the replica go on without what the
    master did in that time."""
    replica = sentinel.replica.proc
    assert replica is not None
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        with sentinel.master.client() as master:
            master.set(junk_key, b"x" * (16 * 1024 * 1024))
        time.sleep(0.5)
        sentinel.master.kill()
    finally:
        os.kill(replica.pid, signal.SIGCONT)


async def completed(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT count(*) FROM content_queue WHERE status = 'completed'"))


async def test_jobs_run_again_by_a_failover_are_not_paid_for_twice(
    own_sentinel: LocalSentinel,  # first: it stops after the workers
    db: asyncpg.Pool,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    rows = [await create_request(db, brand_id, idea_id) for _ in range(JOBS)]
    fake_ai.script(
        "messages", *(Reply.slow(0.3, Reply.good(CONTENT_REPLY)) for _ in range(JOBS * 2))
    )
    base = make_app_config()
    starts = Starts()
    async with RedisClients(on_sentinel(base, own_sentinel, "p").redis) as clients:
        producer = Producer(clients.shared, prefix=prefix)
        for n, row_id in enumerate(rows):
            await producer.enqueue(Q, {"content_queue_id": str(row_id)}, id=f"c-{n}", replicas=1)
        for name in ("a", "b"):
            run_worker(on_sentinel(base, own_sentinel, name), [Q], observers=[starts])
        await wait_for(lambda: _at_least(db, KILL_AT), within=30, interval=0.05)
        failed_at = time.monotonic()
        await asyncio.to_thread(lose_the_last_writes, own_sentinel, f"{prefix}:junk")
        promoted_in = await asyncio.to_thread(own_sentinel.wait_promoted)
        await wait_for(lambda: _at_least(db, JOBS), within=60, interval=0.1)
        finished_in = time.monotonic() - failed_at

    again = {job_id: n for job_id, n in starts.by_id.items() if n > 1}
    calls = fake_ai.count("messages")
    print(
        f"promoted {promoted_in:.2f}s after the kill, all {JOBS} done {finished_in:.1f}s after;"
        f" {len(again)} jobs started again ({sum(again.values())} starts), {calls} paid calls"
    )
    assert again, "the failover re-delivered nothing: this test tested nothing"
    assert calls == JOBS, f"{calls - JOBS} paid call(s) made twice"
    assert await db.fetchval("SELECT count(*) FROM contents") == JOBS


async def _at_least(db: asyncpg.Pool, n: int) -> bool:
    return await completed(db) >= n
