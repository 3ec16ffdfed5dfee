"""Every paid call once, with real worker processes and real signals (issue 8, acceptance 1
and 2): a worker frozen with SIGSTOP past its heartbeat TTL while its content, research and
media jobs wait on the (slowed) fake provider is recovered by a second process, which
defers to the frozen owner's lease instead of paying; with a lease short enough to expire
meanwhile, the second process takes over and pays once more (the lease's bound) and the
thawed owner's late commit is fenced out. And one job pushed twice at once to two
processes pays once."""

from __future__ import annotations

import json
import signal
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
    create_request,
    drained,
    queue_tables,
    worker_sections,
)


async def push_three(redis: Redis, prefix: str, db: asyncpg.Pool) -> dict[str, str]:
    """A content, a research and a media job; returns queue -> job id."""
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    row_id = await create_request(db, brand_id, idea_id)
    jobs = {
        "content-generation": {"id": "c-1", "content_queue_id": str(row_id)},
        "research": {"id": "r-1", "idea_id": str(idea_id), "type": "keywords"},
        "media-generation": {"id": "m-1", "brand_id": str(brand_id), "prompt": "a warm house"},
    }
    for queue, job in jobs.items():
        await redis.lpush(QueueKeys(prefix, queue).wait, json.dumps(job))
    return {queue: job["id"] for queue, job in jobs.items()}


def finished(process: WorkerProcess, outcome: str) -> set[str]:
    return {
        e["job_id"]
        for e in process.events()
        if e.get("event") == "job_finished" and e.get("outcome") == outcome
    }


def completions(*processes: WorkerProcess) -> list[str]:
    return [
        e["job_id"]
        for process in processes
        for e in process.events()
        if e.get("event") == "job_finished" and e.get("outcome") == "completed"
    ]


def logged(process: WorkerProcess, event: str) -> list[dict[str, Any]]:
    return [e for e in process.events() if e.get("event") == event]


async def saved_once(db: asyncpg.Pool) -> None:
    """One content, one research run, one completed media row: nothing written twice."""

    async def all_saved() -> bool:
        media = await db.fetchval("SELECT count(*) FROM media WHERE status = 'completed'")
        runs = await db.fetchval("SELECT count(*) FROM research_runs")
        return bool(await db.fetchval("SELECT count(*) FROM contents") and runs and media)

    await wait_for(all_saved, within=30, interval=0.1)
    assert await db.fetchval("SELECT count(*) FROM contents") == 1
    assert await db.fetchval("SELECT count(*) FROM research_runs") == 1
    assert await db.fetchval("SELECT count(*) FROM media") == 1


async def freeze_with_calls_out(
    spawn_worker: Any, fake_ai: FakeAI, redis: Redis, prefix: str, db: asyncpg.Pool, **kw: Any
) -> tuple[WorkerProcess, dict[str, str]]:
    """Worker A takes the three jobs; once their three calls are at the (slow) fake, A is
    stopped with SIGSTOP."""
    owner = spawn_worker(queue_tables(timeout=60.0), {"name": "wa"}, **kw)
    await wait_started(owner)
    jobs = await push_three(redis, prefix, db)
    await wait_for(lambda: len(fake_ai.calls) == 3, within=15)
    owner.signal(signal.SIGSTOP)
    return owner, jobs


@pytest.mark.timeout(120)
async def test_a_frozen_owner_keeps_its_work_and_the_recovering_process_pays_nothing(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    database_url: str,
    spawn_worker: Any,
    tmp_path: Path,
) -> None:
    fake_ai.delay = 3.0
    kw = worker_sections(fake_ai, database_url, tmp_path / "media", timeout=20.0, work_lease=12.0)
    owner, jobs = await freeze_with_calls_out(spawn_worker, fake_ai, redis, prefix, db, **kw)
    try:
        other = spawn_worker(queue_tables(timeout=60.0), {"name": "wb"}, **kw)
        await wait_started(other)
        # B recovers A's three jobs (A's heartbeat expired) and finds each piece leased by
        # A, whose identity claim has lapsed too: A may be alive, so B defers.
        await wait_for(lambda: finished(other, "deferred") == set(jobs.values()), within=20)
    finally:
        owner.signal(signal.SIGCONT)
    await saved_once(db)
    await wait_for(lambda: drained(redis, prefix), within=30, interval=0.2)
    assert len(fake_ai.calls) == 3  # one paid call per piece
    # Each job ran to completion twice: A's run, and the recovered copy B deferred, which
    # (in whichever process took it when it came back) found the work saved.
    for job_id in jobs.values():
        assert completions(owner, other).count(job_id) == 2, job_id
    held = {e["work_key"].split(":")[0] for e in logged(other, "lease_held")}
    assert held == {"content", "research", "media"}
    assert not logged(other, "lease_taken_over")
    owners = {
        r["owner_token"].split("|")[2] for r in await db.fetch("SELECT * FROM provider_calls")
    }
    assert all(token.startswith(f"{owner_identity(owner)}/") for token in owners)
    ledger = {str(r["id"]) for r in await db.fetch("SELECT id FROM provider_calls")}
    assert ledger == set(fake_ai.call_ids())
    assert await redis.llen(QueueKeys(prefix, "content-generation").dead) == 0


def owner_identity(process: WorkerProcess) -> str:
    [started] = logged(process, "worker_started")
    return str(started["worker"])


@pytest.mark.timeout(120)
async def test_a_lease_that_expires_while_its_owner_is_frozen_is_taken_over_once(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    database_url: str,
    spawn_worker: Any,
    tmp_path: Path,
) -> None:
    fake_ai.delay = 4.0
    kw = worker_sections(fake_ai, database_url, tmp_path / "media", timeout=20.0, work_lease=1.0)
    owner, jobs = await freeze_with_calls_out(spawn_worker, fake_ai, redis, prefix, db, **kw)
    try:
        other = spawn_worker(queue_tables(timeout=60.0), {"name": "wb"}, **kw)
        await wait_started(other)
        # A's leases expired: B takes the pieces over and pays once more for each (the
        # lease's bound), its calls at the fake too before A wakes.
        await wait_for(lambda: len(fake_ai.calls) == 6, within=20)
    finally:
        owner.signal(signal.SIGCONT)
    await saved_once(db)
    await wait_for(lambda: drained(redis, prefix), within=30, interval=0.2)
    await wait_for(lambda: len(logged(owner, "lease_lost")) == 3, within=15)
    assert len(fake_ai.calls) == 6
    assert logged(other, "work_lease_short")  # warned at startup
    taken = logged(other, "lease_taken_over")
    assert sorted(e["why"] for e in taken) == ["expired"] * 3
    lost = logged(owner, "lease_lost")
    assert {e["holder"] for e in lost} == {owner_identity(other)}
    assert set(jobs.values()) <= finished(owner, "completed")  # fenced out: discarded, done
    calls = await db.fetch("SELECT * FROM provider_calls ORDER BY started_at")
    assert {str(c["id"]) for c in calls} == set(fake_ai.call_ids())
    by_owner = {c["owner_token"].split("|")[2].split("/")[0] for c in calls}
    assert by_owner == {owner_identity(owner), owner_identity(other)}
    discarded = [c for c in calls if c["consumed_by"] == "lease_lost"]
    assert len(discarded) == 3  # the late owner's replies are never reused
    content = await db.fetchrow("SELECT body FROM contents")
    assert content["body"]


@pytest.mark.timeout(90)
async def test_one_job_pushed_twice_at_once_to_two_processes_pays_once(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    database_url: str,
    spawn_worker: Any,
    tmp_path: Path,
) -> None:
    fake_ai.delay = 1.0
    # A call takes 1 s; the SDK timeout and the lease leave room for a busy machine.
    kw = worker_sections(fake_ai, database_url, tmp_path / "media", timeout=10.0, work_lease=8.0)
    # Heartbeats that a busy machine does not miss: no recovery, only the two copies.
    timings = {"heartbeat_interval": 1.0, "heartbeat_ttl": 6.0, "recovery_interval": 1.0}
    workers = [spawn_worker(queue_tables(), {"name": f"w{n}", **timings}, **kw) for n in range(2)]
    for worker in workers:
        await wait_started(worker)
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    row_id = await create_request(db, brand_id, idea_id)
    payload = json.dumps({"id": "dup-1", "content_queue_id": str(row_id)})
    keys = QueueKeys(prefix, "content-generation")
    # The second copy arrives while the first one's call is out: the process running it
    # takes one job at a time, so the other process runs the second copy meanwhile.
    await redis.lpush(keys.wait, payload)
    await wait_for(lambda: fake_ai.calls, within=10)
    await redis.lpush(keys.wait, payload)
    await wait_for(lambda: drained(redis, prefix), within=30, interval=0.2)
    outcomes = [r["outcome"] for r in await db.fetch("SELECT outcome FROM provider_calls")]
    assert len(fake_ai.calls) == 1, outcomes
    assert await db.fetchval("SELECT count(*) FROM contents") == 1
    deferred = [w for w in workers if "dup-1" in finished(w, "deferred")]
    assert deferred, "one copy should have waited for the other's lease"
    # Both copies done (and any a recovery made on a slow machine): one paid.
    assert completions(*workers).count("dup-1") >= 2
    assert await redis.llen(keys.dead) == 0
    [call] = await db.fetch("SELECT id, outcome FROM provider_calls")
    assert (str(call["id"]), call["outcome"]) == (fake_ai.call_ids()[0], "ok")
