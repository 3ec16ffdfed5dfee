"""A dependency outage holds the queue instead of burning attempts (issue 9, item 2), with
the engine's own mechanism and a handler that needs PostgreSQL: a throwaway cluster of the
test's own is stopped while two worker processes run its jobs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from tests.conftest import REPO, queue_table, wait_for, wait_started
from tests.fakes.postgres import ThrowawayCluster
from tests.ports import free_port

JOBS = 60
HANDLER = "tests.support.db_handlers:query"


@pytest.fixture
async def cluster() -> AsyncIterator[ThrowawayCluster]:
    own = ThrowawayCluster()
    try:
        await asyncio.to_thread(own.init)
        await asyncio.to_thread(own.start)
        yield own
    finally:
        await asyncio.to_thread(own.destroy)


async def readiness(port: int) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status, await response.json()


@pytest.mark.timeout(120)
async def test_a_postgres_outage_holds_the_queue_and_spends_no_attempt(
    cluster: ThrowawayCluster, redis: Redis, prefix: str, spawn_worker: Any
) -> None:
    record = f"{prefix}:rec"
    keys = QueueKeys(prefix, "q")
    queues = queue_table("q", handler=HANDLER, concurrency=3, max_attempts=2)
    ports = [free_port(), free_port()]
    workers = [
        spawn_worker(
            queues,
            worker={"name": f"w{n}"},
            database={"url": cluster.url, "pool_size": 3},
            http={"port": port, "check_database": False},
        )
        for n, port in enumerate(ports)
    ]
    for worker in workers:
        await wait_started(worker)
    producer = Producer(redis, prefix=prefix)
    for n in range(JOBS):
        await producer.enqueue("q", {"record": record, "sleep": 0.2}, id=f"j{n}")
    await wait_for(lambda: redis.llen(f"{record}:done"), within=20)

    await asyncio.to_thread(cluster.stop, "immediate")
    stopped = time.monotonic()
    # The hold shows: the held key names the dependency, /readyz says why.
    raw_hold = await wait_for(lambda: redis.get(keys.held), within=10)
    hold = json.loads(raw_hold)
    assert hold["dependency"] == "postgres"
    seen_by_readyz = False
    while time.monotonic() - stopped < 3.0:
        for port in ports:
            status, body = await readiness(port)
            if status == 503 and any(r.startswith("dependency:postgres") for r in body["reasons"]):
                seen_by_readyz = True
        await asyncio.sleep(0.2)
    assert seen_by_readyz, "no process said in /readyz that postgres is down"
    status = await asyncio.to_thread(status_json, workers[0])
    [queue] = [q for q in status["queues"] if q["queue"] == "q"]
    assert queue["held"]["dependency"] == "postgres"
    assert queue["held"]["left_ms"] > 0
    done_during = await redis.llen(f"{record}:done")
    await asyncio.to_thread(cluster.start)
    restarted = time.monotonic()

    async def all_done() -> bool:
        done = {json.loads(r)["id"] for r in await redis.lrange(f"{record}:done", 0, -1)}
        return len(done) == JOBS

    await wait_for(all_done, within=40, interval=0.1)
    resumed_in = time.monotonic() - restarted
    await wait_for(lambda: _gone(redis, keys.held), within=10)

    done = [json.loads(r) for r in await redis.lrange(f"{record}:done", 0, -1)]
    starts = [json.loads(r) for r in await redis.lrange(record, 0, -1)]
    runs = Counter(d["id"] for d in done)
    assert set(runs) == {f"j{n}" for n in range(JOBS)}
    assert max(runs.values()) == 1, "a job completed twice"
    assert {d["attempt"] for d in done} == {1}, "an attempt was spent on the outage"
    assert await redis.llen(keys.dead) == 0
    held_starts = len(starts) - len(done)
    assert held_starts > 0, "no job met the outage"
    events = [e for w in workers for e in w.events()]
    held = [e for e in events if e.get("event") == "job_finished" and e["outcome"] == "held"]
    assert len(held) == held_starts
    assert {e["reason"] for e in held} == {"postgres"}
    assert any(e.get("event") == "dependency_down" for e in events)
    assert any(e.get("event") == "dependency_up" for e in events)
    print(
        f"held {held_starts} job(s); {done_during} done before the hold; all done"
        f" {resumed_in:.1f}s after the restart"
    )


def status_json(worker: Any) -> dict[str, Any]:
    """``python -m alchemy status --json`` with the worker's own config file."""
    config = worker.log_path.with_suffix(".toml")
    out = subprocess.run(
        [sys.executable, "-m", "alchemy", "--config", str(config), "status", "--json"],
        capture_output=True,
        check=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "REDIS_URL"},
        timeout=30,
    )
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


async def _gone(redis: Redis, key: str) -> bool:
    return await redis.exists(key) == 0
