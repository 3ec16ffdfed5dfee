"""Acceptance 3 of issue 8: 200 content jobs with media follow-ups over two worker
processes, each killed with SIGKILL five times at random moments and started again (same
identity): nothing lost, nothing saved twice, no call paid for work already committed, the
ledger's calls are exactly the fake's (plus the rows of calls a kill cut off before the
request left), and every call above one per piece was paid because a kill cut its
predecessor off."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from tests.conftest import WorkerProcess, wait_for, wait_started
from tests.fakes.ai_server import FakeAI
from tests.handlers.support import (
    create_brand,
    create_idea,
    drained,
    queue_tables,
    worker_sections,
)

JOBS = 200
KILLS_EACH = 5
CALL_SECONDS = 0.15  # the fake's time per call: fast, not instant


async def create_rows(db: asyncpg.Pool, count: int) -> list[Any]:
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    rows = await db.fetch(
        "INSERT INTO content_queue (brand_id, idea_id, platform)"
        " SELECT $1, $2, 'linkedin' FROM generate_series(1, $3) RETURNING id",
        brand_id,
        idea_id,
        count,
    )
    return [row["id"] for row in rows]


class Crew:
    """Two worker processes; :meth:`kill_and_restart` replaces one with a fresh process of
    the same identity."""

    def __init__(self, spawn_worker: Any, kw: dict[str, Any]) -> None:
        self.spawn_worker = spawn_worker
        self.kw = kw
        self.queues = queue_tables(concurrency=2, timeout=60.0, max_attempts=10)
        self.current: list[WorkerProcess] = []
        self.every: list[WorkerProcess] = []
        self.kills = 0

    def start(self, n: int) -> WorkerProcess:
        worker = {"name": f"k{n}", "max_recoveries": 100}
        process = self.spawn_worker(self.queues, worker, **self.kw)
        self.every.append(process)
        return process

    async def start_all(self) -> None:
        self.current = [self.start(0), self.start(1)]
        for process in self.current:
            await wait_started(process)

    async def kill_and_restart(self, n: int) -> None:
        await asyncio.to_thread(self.current[n].kill)  # SIGKILL, then reaped
        self.kills += 1
        self.current[n] = self.start(n)
        await wait_started(self.current[n], within=30)


async def kill_at_random(crew: Crew, rng: random.Random, spread: float) -> None:
    """Each process killed KILLS_EACH times, at random moments over about ``spread`` s."""
    victims = [n for n in (0, 1) for _ in range(KILLS_EACH)]
    rng.shuffle(victims)
    for victim in victims:
        await asyncio.sleep(rng.uniform(0.3, 2 * spread / len(victims)))
        await crew.kill_and_restart(victim)


@pytest.mark.timeout(300)
async def test_two_processes_killed_ten_times_pay_once_per_piece(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    database_url: str,
    spawn_worker: Any,
    tmp_path: Path,
) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    fake_ai.delay = CALL_SECONDS
    kw = worker_sections(fake_ai, database_url, tmp_path / "media", timeout=20.0)
    crew = Crew(spawn_worker, kw)
    await crew.start_all()
    rows = await create_rows(db, JOBS)
    wait = QueueKeys(prefix, "content-generation").wait
    jobs = [
        json.dumps({"id": f"k-{n}", "content_queue_id": str(r), "media": True})
        for n, r in enumerate(rows)
    ]
    await redis.lpush(wait, *jobs)
    started = time.monotonic()
    await kill_at_random(crew, rng, spread=30.0)
    killing = time.monotonic() - started

    async def all_done() -> bool:
        media = await db.fetchval("SELECT count(*) FROM media WHERE status = 'completed'")
        return media == JOBS and await drained(redis, prefix)

    await wait_for(all_done, within=180, interval=0.5)
    took = time.monotonic() - started

    # Nothing lost, nothing saved twice.
    statuses = Counter(r["status"] for r in await db.fetch("SELECT status FROM content_queue"))
    assert statuses == {"completed": JOBS}
    assert await db.fetchval("SELECT count(*) FROM contents") == JOBS
    media = await db.fetch("SELECT content_id, kind, job_id, status FROM media")
    assert len(media) == JOBS
    assert len({(m["content_id"], m["kind"]) for m in media}) == JOBS
    for queue in ("content-generation", "media-generation"):
        assert await redis.llen(QueueKeys(prefix, queue).dead) == 0

    # The ledger and the fake agree, call for call.
    calls = await db.fetch("SELECT * FROM provider_calls")
    ledger = {str(c["id"]): c for c in calls}
    seen = Counter(fake_ai.call_ids())
    assert max(seen.values()) == 1
    assert set(seen) <= set(ledger), "a call the fake saw is missing from the ledger"
    never_sent = [c for i, c in ledger.items() if i not in seen]
    assert {c["outcome"] for c in never_sent} <= {"interrupted"}
    assert not [c for c in calls if c["outcome"] == "in_flight"]

    # No call for work already committed: every call of a piece began before its commit.
    committed = {
        f"content:{r['content_queue_id']}": r["created_at"]
        for r in await db.fetch("SELECT content_queue_id, created_at FROM contents")
    }
    committed |= {
        f"media:{r['job_id']}": r["completed_at"]
        for r in await db.fetch("SELECT job_id, completed_at FROM media")
    }
    late = [c for c in calls if c["started_at"] > committed[c["work_key"]]]
    assert late == []

    # Calls paid above one per piece, each because a kill cut its predecessor off.
    paid = Counter(ledger[i]["work_key"] for i in seen)
    assert set(paid) == set(committed)
    extra = sum(count - 1 for count in paid.values())
    cut_off = [ledger[i] for i in seen if ledger[i]["outcome"] == "interrupted"]
    assert extra <= len(cut_off)
    print(
        f"\nseed {seed}: {crew.kills} kills over {killing:.0f}s, all done after {took:.0f}s;"
        f" {len(seen)} paid calls for {len(committed)} pieces ({extra} above one per piece),"
        f" {len(cut_off)} cut off by a kill after the request left,"
        f" {len(never_sent)} ledger rows of requests a kill stopped before they left"
    )
    assert crew.kills == 2 * KILLS_EACH
