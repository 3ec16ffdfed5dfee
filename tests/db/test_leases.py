"""Leases on pieces of paid work, against the real PostgreSQL and Redis: claimed once,
deferred to a live holder, taken over from a dead or expired one, and the commit fenced."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from alchemy.errors import DeferredError
from alchemy.paid.leases import RECHECK_MAX, RECHECK_MIN, LeaseLostError, Leases, Owner
from alchemy.queue.identity import IdentityClaims
from alchemy.queue.job import Job, Runner

KEY = "content:00000000-0000-0000-0000-00000000000a"


@dataclass
class Heard:
    events: list[str] = field(default_factory=list)

    def on_provider_call(self, call: Any) -> None:
        raise AssertionError("no calls here")

    def on_lease(self, queue: str, event: str) -> None:
        self.events.append(f"{queue}:{event}")


def owner(identity: str, incarnation: str, run: int, job_id: str = "job-1") -> Owner:
    runner = Runner(identity, incarnation, run)
    return Owner.of(Job(job_id, "content-generation", 1, {}, runner=runner))


@pytest.fixture
def claims(redis: Redis, prefix: str) -> IdentityClaims:
    return IdentityClaims(redis, prefix=prefix)


def leases_for(claims: IdentityClaims, seconds: float = 30.0) -> tuple[Leases, Heard]:
    heard = Heard()
    return Leases(claims, seconds, heard), heard


async def lease_row(db: asyncpg.Pool) -> asyncpg.Record:
    row: asyncpg.Record = await db.fetchrow("SELECT * FROM work_leases WHERE work_key = $1", KEY)
    return row


async def test_a_live_sibling_run_defers_and_a_released_lease_is_claimed(
    db: asyncpg.Pool, claims: IdentityClaims
) -> None:
    leases, heard = leases_for(claims, seconds=12.0)
    first = await leases.acquire(db, KEY, owner("h:w1", "inc-1", 1))
    assert first.fresh
    with pytest.raises(DeferredError) as deferred:
        await leases.acquire(db, KEY, owner("h:w1", "inc-1", 2))
    assert 10 < deferred.value.delay <= 12  # the lease's remaining time
    assert "job-1" in str(deferred.value)
    await leases.release(db, first)
    leases.forget(first.owner)
    second = await leases.acquire(db, KEY, owner("h:w1", "inc-1", 2))
    assert not second.fresh  # leased before: its earlier calls are looked at
    row = await lease_row(db)
    assert (row["owner_token"], row["takeovers"]) == (second.owner.token, 0)
    assert heard.events == ["content-generation:deferred"]


@pytest.mark.parametrize(
    ("lease", "recheck"), [(3600.0, RECHECK_MAX), (270.0, 27.0), (70.0, RECHECK_MIN)]
)
async def test_the_holder_is_looked_at_again_within_a_tenth_of_the_lease(
    db: asyncpg.Pool, claims: IdentityClaims, lease: float, recheck: float
) -> None:
    leases, _ = leases_for(claims, seconds=lease)
    await leases.acquire(db, KEY, owner("h:w1", "inc-1", 1))
    with pytest.raises(DeferredError) as deferred:
        await leases.acquire(db, KEY, owner("h:w1", "inc-1", 2))
    assert deferred.value.delay == recheck


async def test_a_run_of_this_process_that_ended_without_releasing_is_taken_over(
    db: asyncpg.Pool, claims: IdentityClaims
) -> None:
    leases, heard = leases_for(claims)
    ended = await leases.acquire(db, KEY, owner("h:w1", "inc-1", 1))
    leases.forget(ended.owner)  # its release failed (PostgreSQL away), and the run is over
    taker = await leases.acquire(db, KEY, owner("h:w1", "inc-1", 2))
    assert (await lease_row(db))["owner_token"] == taker.owner.token
    assert (await lease_row(db))["takeovers"] == 1
    assert heard.events == ["content-generation:taken_over"]


@pytest.mark.parametrize(
    ("holder_now", "taken_over"),
    [
        (None, False),  # claim gone: frozen, or Redis lost it: may be alive
        ("inc-a", False),  # the owner's own incarnation still holds its identity
        ("inc-b", True),  # the identity restarted: the owner is dead
    ],
)
async def test_another_process_lease_by_what_its_identity_claim_says(
    db: asyncpg.Pool, claims: IdentityClaims, holder_now: str | None, taken_over: bool
) -> None:
    theirs, _ = leases_for(claims)
    await theirs.acquire(db, KEY, owner("h:a", "inc-a", 7))
    if holder_now is not None:
        assert (
            await claims.claim("h:a", f'{{"incarnation": "{holder_now}"}}', holder_now, 60_000)
            is None
        )
    mine, heard = leases_for(claims)
    me = owner("h:b", "inc-x", 1, job_id="job-2")
    if taken_over:
        await mine.acquire(db, KEY, me)
        assert (await lease_row(db))["owner_token"] == me.token
        assert heard.events == ["content-generation:taken_over"]
    else:
        with pytest.raises(DeferredError):
            await mine.acquire(db, KEY, me)
        assert (await lease_row(db))["job_id"] == "job-1"
        assert heard.events == ["content-generation:deferred"]


async def test_an_expired_lease_is_taken_over_and_the_late_owner_is_fenced_out(
    db: asyncpg.Pool, claims: IdentityClaims
) -> None:
    slow, _ = leases_for(claims, seconds=0.3)
    late = await slow.acquire(db, KEY, owner("h:a", "inc-a", 1))
    await asyncio.sleep(0.4)
    fast, heard = leases_for(claims)
    taker = await fast.acquire(db, KEY, owner("h:b", "inc-b", 1, job_id="job-2"))
    assert heard.events == ["content-generation:taken_over"]

    marker = uuid.uuid4().hex

    async def late_commit() -> None:
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO brands (name) VALUES ($1)", marker)
            await slow.fence(conn, late)

    with pytest.raises(LeaseLostError):
        await late_commit()
    assert await db.fetchval("SELECT count(*) FROM brands WHERE name = $1", marker) == 0

    async with db.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO brands (name) VALUES ($1)", marker)
        await fast.fence(conn, taker)
    assert await db.fetchval("SELECT count(*) FROM brands WHERE name = $1", marker) == 1
    row = await lease_row(db)
    assert row["owner_token"] is None  # released with the commit
    assert row["released_at"] is not None
    assert row["takeovers"] == 1


async def test_a_claim_waits_for_a_commit_in_progress_and_then_sees_it(
    db: asyncpg.Pool, claims: IdentityClaims
) -> None:
    """The fence's row lock: a claimer arriving during the commit gets the lease only
    after it, so its "already committed?" check sees the result."""
    leases, _ = leases_for(claims)
    holder = await leases.acquire(db, KEY, owner("h:w1", "inc-1", 1))
    async with db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await leases.fence(conn, holder)
        claiming = asyncio.create_task(leases.acquire(db, KEY, owner("h:w1", "inc-1", 2)))
        await asyncio.sleep(0.2)
        assert not claiming.done()  # waiting on the lease row
        await tx.commit()
    lease = await asyncio.wait_for(claiming, 5)
    assert (await lease_row(db))["owner_token"] == lease.owner.token
