"""Issue 9, acceptance 2: PostgreSQL (a throwaway cluster of the test's own) stopped for 3 s
twice and once for 60 s while two worker processes run 120 content and research jobs with
the real handlers, the real SDKs against the fake, and the shipped backoff: no job lost, no
attempt spent on the outage, every row completed exactly once (and paid once), and the hold
visible in ``/readyz`` and ``status`` while it lasts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from alchemy.db import init_connection
from alchemy.db.migrate import migrate_url
from alchemy.queue.keys import QueueKeys
from tests.conftest import REPO, wait_for, wait_started
from tests.fakes.ai_server import FakeAI
from tests.fakes.postgres import ThrowawayCluster
from tests.handlers.support import HANDLERS, create_brand, create_idea, drained, worker_sections
from tests.ports import free_port

CONTENT = 60
RESEARCH = 60
CALL_SECONDS = 0.5  # the fake's time per call, so the work outlasts the first two outages
QUEUES = ("content-generation", "research")


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
        return -1  # the server is away: ask again


async def readiness(session: aiohttp.ClientSession, port: int) -> list[str]:
    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
        body = await response.json()
        return list(body["reasons"]) if response.status == 503 else []


def status_json(config: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "alchemy", "--config", str(config), "status", "--json"],
        capture_output=True,
        check=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")},
        timeout=30,
    )
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


@pytest.mark.timeout(300)
async def test_postgres_outages_hold_the_queues_and_lose_nothing(
    cluster: ThrowawayCluster,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    spawn_worker: Any,
    tmp_path: Path,
) -> None:
    fake_ai.delay = CALL_SECONDS
    pool = await asyncpg.create_pool(cluster.url, min_size=1, max_size=2, init=init_connection)
    try:
        brand_id = await create_brand(pool)
        ideas = [await create_idea(pool, brand_id) for _ in range(RESEARCH)]
        idea_id = ideas[0]
        rows = await pool.fetch(
            "INSERT INTO content_queue (brand_id, idea_id, platform)"
            " SELECT $1, $2, 'linkedin' FROM generate_series(1, $3) RETURNING id",
            brand_id,
            idea_id,
            CONTENT,
        )
        # The shipped queue settings (backoff, attempts, timeouts), without the rate limits
        # (they would stretch 120 jobs over 12 minutes) and with more hands.
        queues = {
            name: {"handler": HANDLERS[name], "concurrency": 2 if name == "research" else 3}
            for name in QUEUES
        }
        sections = worker_sections(fake_ai, cluster.url, tmp_path / "media", timeout=30.0)
        ports = [free_port(), free_port()]
        workers = [
            spawn_worker(
                queues,
                # The shipped heartbeat timings: the first use of the SDKs can block a
                # loaded machine's event loop past the tests' usual 2 s TTL.
                {
                    "name": f"pg{n}",
                    "heartbeat_interval": 2.0,
                    "heartbeat_ttl": 8.0,
                    "recovery_interval": 2.0,
                },
                http={"port": port, "check_database": False},
                **sections,
            )
            for n, port in enumerate(ports)
        ]
        for worker in workers:
            await wait_started(worker)
        content_wait = QueueKeys(prefix, "content-generation").wait
        research_wait = QueueKeys(prefix, "research").wait
        await redis.lpush(
            content_wait,
            *[
                json.dumps({"id": f"c-{n}", "content_queue_id": str(r["id"])})
                for n, r in enumerate(rows)
            ],
        )
        await redis.lpush(
            research_wait,
            *[
                json.dumps({"id": f"r-{n}", "idea_id": str(i), "type": "keywords"})
                for n, i in enumerate(ideas)
            ],
        )

        async def done_at_least(n: int) -> bool:
            completed = await count(
                pool, "SELECT count(*) FROM content_queue WHERE status = 'completed'"
            )
            researched = await count(pool, "SELECT count(*) FROM research_runs")
            return completed + researched >= n

        async def outage(seconds: float, *, watch: bool) -> dict[str, Any]:
            """Stop the server for ``seconds``; while it is down, what /readyz and status say."""
            await asyncio.to_thread(cluster.stop, "immediate")
            stopped = time.monotonic()
            seen: dict[str, Any] = {"readyz": [], "held": {}}
            async with aiohttp.ClientSession() as session:
                while time.monotonic() - stopped < seconds:
                    if watch:
                        for port in ports:
                            seen["readyz"] += await readiness(session, port)
                        if not seen["held"] and seen["readyz"]:
                            status = await asyncio.to_thread(
                                status_json, workers[0].log_path.with_suffix(".toml")
                            )
                            seen["held"] = {
                                q["queue"]: q["held"] for q in status["queues"] if q["held"]
                            }
                    await asyncio.sleep(0.5)
            await asyncio.to_thread(cluster.start)
            return seen

        await wait_for(lambda: done_at_least(15), within=60, interval=0.2)
        await outage(3.0, watch=False)
        await wait_for(lambda: done_at_least(35), within=60, interval=0.2)
        await outage(3.0, watch=False)
        await wait_for(lambda: done_at_least(55), within=60, interval=0.2)
        long = await outage(60.0, watch=True)
        back = time.monotonic()

        async def all_done() -> bool:
            return await done_at_least(CONTENT + RESEARCH) and await drained(redis, prefix, *QUEUES)

        await wait_for(all_done, within=120, interval=0.5)
        resumed_in = time.monotonic() - back

        # Exactly once: one content per row, one research run per idea, every row completed.
        contents = await pool.fetch("SELECT content_queue_id FROM contents")
        assert sorted(c["content_queue_id"] for c in contents) == sorted(r["id"] for r in rows)
        runs = await pool.fetch("SELECT idea_id, job_id FROM research_runs")
        assert Counter(r["idea_id"] for r in runs) == Counter(ideas)
        statuses = await pool.fetch("SELECT status FROM content_queue")
        assert {s["status"] for s in statuses} == {"completed"}
        ideas_done = await pool.fetch("SELECT status FROM ideas")
        assert {i["status"] for i in ideas_done} == {"researched"}
        # Nothing lost, nothing dead, paid once per piece.
        for queue in QUEUES:
            assert await redis.llen(QueueKeys(prefix, queue).dead) == 0
        assert fake_ai.count("messages") == CONTENT + RESEARCH

        # No attempt spent on the outage: every finished attempt was the first, and the
        # jobs the outages met were held (sent back without an attempt), not retried.
        finished = [e for w in workers for e in w.events() if e.get("event") == "job_finished"]
        outcomes = Counter(e["outcome"] for e in finished)
        assert outcomes["retrying"] == 0, outcomes
        assert outcomes["held"] > 0, outcomes
        assert {e["attempt"] for e in finished if e["outcome"] == "completed"} == {1}
        assert {e.get("reason") for e in finished if e["outcome"] == "held"} == {"postgres"}

        # The 60 s outage was visible while it lasted.
        assert any(r.startswith("dependency:postgres") for r in long["readyz"]), long
        assert long["held"], "status never showed a held queue"
        assert {h["dependency"] for h in long["held"].values()} == {"postgres"}
        print(
            f"outcomes {dict(outcomes)}; held queues {sorted(long['held'])};"
            f" all done {resumed_in:.1f}s after the 60 s outage"
        )
    finally:
        await pool.close()
