"""Budgets with real worker processes (issue 13): the window's reset releases held jobs
(acceptance 2, on a test clock: PostgreSQL's ``alchemy_now()`` moved to just before
midnight in the budget's time zone); a worker killed with SIGKILL while its calls hold
reservations gives them back within the bound, to the exact figure the ledger implies
(acceptance 3); and a provider's own spend limit pauses its queue, attempts kept, until
``alchemy resume`` or the configured time (acceptance 4)."""

from __future__ import annotations

import datetime
import json
import re
import signal
import time
import uuid
import zoneinfo
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from alchemy.config import BudgetsConfig
from alchemy.paid.brand_budgets import report
from alchemy.queue.admin import QueueAdmin
from tests.conftest import REPO, wait_for, wait_started
from tests.fakes.ai_server import FakeAI, Reply
from tests.handlers.support import queue_tables
from tests.process.budgets import (
    CALL_USD,
    QUEUE,
    brand_with_rows,
    budget_held,
    cli_config,
    completed,
    ledger_cost,
    push_rows,
    run_cli,
    sections,
)

ZONE = "Asia/Kathmandu"  # UTC+05:45: a window that is not UTC's day
RESTORE_CLOCK = "CREATE OR REPLACE FUNCTION alchemy_now() RETURNS timestamptz LANGUAGE sql"
RESTORE_CLOCK += " STABLE AS 'SELECT now()'"


@pytest.fixture
async def clock(db: asyncpg.Pool) -> AsyncIterator[Any]:
    """``await clock(seconds)``: PostgreSQL's budget clock runs ``seconds`` ahead."""

    async def shift(seconds: float) -> None:
        await db.execute(
            "CREATE OR REPLACE FUNCTION alchemy_now() RETURNS timestamptz LANGUAGE sql STABLE"
            f" AS $$ SELECT now() + interval '{seconds:.6f} seconds' $$"
        )

    yield shift
    await db.execute(RESTORE_CLOCK)


def seconds_to_midnight(zone: str) -> float:
    now = datetime.datetime.now(zoneinfo.ZoneInfo(zone))
    midnight = datetime.datetime.combine(
        now.date() + datetime.timedelta(days=1), datetime.time(), now.tzinfo
    )
    return (midnight - now).total_seconds()


async def spend_already(db: asyncpg.Pool, brand_id: uuid.UUID, usd: Decimal) -> None:
    """A call of the brand's, paid earlier in the window (on the budget's clock)."""
    await db.execute(
        "INSERT INTO provider_calls (id, job_id, work_key, queue, brand_id, owner_token,"
        " provider, model, fingerprint, outcome, cost_usd, started_at, finished_at)"
        " VALUES ($1, 'earlier', 'content:earlier', $2, $3, 'o', 'anthropic',"
        " 'claude-sonnet-5-5', 'f', 'ok', $4, alchemy_now(), alchemy_now())",
        uuid.uuid4(),
        QUEUE,
        brand_id,
        usd,
    )


@pytest.mark.timeout(90)
async def test_the_windows_reset_releases_the_held_jobs(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    database_url: str,
    spawn_worker: Any,
    tmp_path: Path,
    clock: Any,
) -> None:
    budgets = {"daily_usd": 0.05, "time_zone": ZONE, "recheck": 60.0}
    kw = sections(fake_ai, database_url, tmp_path / "media", budgets)
    worker = spawn_worker(queue_tables(concurrency=3), {"name": "reset"}, **kw)
    await wait_started(worker)
    brand_id, rows = await brand_with_rows(db, "Spent Heating", 3)
    await clock(seconds_to_midnight(ZONE) - 4.0)  # the day ends in 4 s
    await spend_already(db, brand_id, Decimal("0.049"))  # config's $0.05 a day: all gone
    reset_at = time.monotonic() + 4.0
    await push_rows(redis, prefix, "r", rows)
    await wait_for(lambda: _is(budget_held(redis, prefix, brand_id), 3), within=3.5)
    assert not fake_ai.calls
    await wait_for(lambda: _is(completed(db, brand_id), 3), within=15)
    late = time.monotonic() - reset_at
    print(f"\nheld until the window's end (recheck 60 s); all 3 done {late:.2f}s after it")
    assert late < 3.0
    assert len(fake_ai.calls) == 3


@pytest.mark.timeout(90)
async def test_a_killed_workers_reservations_are_released_within_the_bound(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    database_url: str,
    spawn_worker: Any,
    tmp_path: Path,
) -> None:
    bound = 3.0
    budgets = {"reservation_timeout": bound}
    config = BudgetsConfig(reservation_timeout=bound)
    kw = sections(fake_ai, database_url, tmp_path / "media", budgets, timeout=bound)
    brand_id, rows = await brand_with_rows(db, "Killed Heating", 3)
    cli = cli_config(tmp_path, prefix, database_url, budgets, providers={"timeout": bound})
    status, _, err = await run_cli(cli, "budget", "set", str(brand_id), "--daily", "0.05")
    assert status == 0, err
    await spend_already(db, brand_id, Decimal("0.0123"))
    # Every call hangs past the kill (the fake's teardown waits out what is left of it).
    fake_ai.delay = 4.0
    worker = spawn_worker(queue_tables(concurrency=3), {"name": "doomed"}, **kw)
    await wait_started(worker)
    await push_rows(redis, prefix, "k", rows)
    await wait_for(lambda: len(fake_ai.calls) == 3, within=15)
    daily = (await report(db, config, brand_id)).brands[0].daily
    reserved = daily.reserved
    assert daily.remaining == Decimal("0.05") - Decimal("0.0123") - reserved
    assert reserved > 0
    worker.signal(signal.SIGKILL)
    killed = time.monotonic()
    spent = await ledger_cost(db, brand_id)

    async def released() -> bool:
        use = (await report(db, config, brand_id)).brands[0].daily
        return use.reserved == 0 and use.remaining == Decimal("0.05") - spent

    await wait_for(released, within=bound + 2, interval=0.05)
    after = time.monotonic() - killed
    in_flight = await db.fetchval(
        "SELECT count(*) FROM provider_calls WHERE brand_id = $1 AND outcome = 'in_flight'",
        brand_id,
    )
    print(
        f"\n3 reservations ${reserved} of a SIGKILLed worker released {after:.2f}s after the"
        f" kill (bound {bound:g}s); remaining ${Decimal('0.05') - spent} = budget - ledger"
    )
    assert in_flight == 3  # the ledger keeps them as they were: unknown, never finished
    assert after <= bound + 0.5
    status, out, _ = await run_cli(cli, "budget", "show", "--brand", str(brand_id), "--json")
    shown = json.loads(out)["brands"][0]["daily"]
    assert shown["reserved_usd"] == 0
    assert Decimal(str(shown["remaining_usd"])) == Decimal("0.05") - spent


@pytest.mark.timeout(90)
async def test_a_providers_spend_limit_pauses_its_queue_and_resume_continues(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    database_url: str,
    spawn_worker: Any,
    tmp_path: Path,
) -> None:
    pause = 5.0
    budgets = {"provider_pause": pause}
    kw = sections(fake_ai, database_url, tmp_path / "media", budgets)
    worker = spawn_worker(queue_tables(), {"name": "limited"}, **kw)
    await wait_started(worker)
    cli = cli_config(tmp_path, prefix, database_url, budgets)
    admin = QueueAdmin(redis, prefix=prefix)
    brand_id, rows = await brand_with_rows(db, "Limited Heating", 2)

    # Anthropic's spend limit: the queue holds; alchemy resume continues at once.
    fake_ai.script("messages", Reply.spend_limit("anthropic"))
    await push_rows(redis, prefix, "a", rows[:1])
    held = await wait_for(lambda: _held(admin), within=10)
    assert held["dependency"] == "provider:anthropic"
    assert "spend limit" in held["reason"]
    assert "usage limits" in held["reason"]
    record = await wait_for(lambda: _record_in(admin, "a-0", "held"), within=5)
    assert (record["attempt"], record["reason"]) == (1, "provider:anthropic")
    status, out, _ = await run_cli(cli, "status")
    assert "held: provider:anthropic spend limit" in out
    status, _, err = await run_cli(cli, "resume", QUEUE)
    assert status == 0, err
    resumed = time.monotonic()
    await wait_for(lambda: _is(completed(db, brand_id), 1), within=pause - 1)
    after_resume = time.monotonic() - resumed
    record = await wait_for(lambda: _record_in(admin, "a-0", "completed"), within=5)
    assert record["attempt"] == 1

    # OpenAI's insufficient_quota: the queue holds; the pause ends by itself.
    fake_ai.script("chat", Reply.spend_limit("openai"))
    job = {"id": "o-0", "content_queue_id": rows[1], "provider": "openai"}
    await redis.lpush(admin_wait(prefix), json.dumps(job))
    held = await wait_for(lambda: _held(admin), within=10)
    paused_at = time.monotonic()
    assert held["dependency"] == "provider:openai"
    assert "insufficient_quota" in held["reason"]
    status, out, _ = await run_cli(cli, "status")
    assert re.fullmatch(documented_status_line(), out.splitlines()[1]), out
    await wait_for(lambda: _is(completed(db, brand_id), 2), within=pause + 5)
    paused_for = time.monotonic() - paused_at
    record = await wait_for(lambda: _record_in(admin, "o-0", "completed"), within=5)
    assert record["attempt"] == 1
    print(
        f"\nanthropic spend limit: done {after_resume:.2f}s after resume returned;"
        f" openai quota: held {paused_for:.1f}s (provider_pause {pause:g}s)"
    )
    assert paused_for >= pause - 1.0
    assert fake_ai.count("messages") == 2
    assert fake_ai.count("chat") == 2
    assert await ledger_cost(db, brand_id) == CALL_USD + await _openai_cost(db, brand_id)


def documented_status_line() -> str:
    """docs/operations.md's `status` line of a queue held for OpenAI's quota, as a pattern
    (the counts and the seconds left vary)."""
    section = (REPO / "docs" / "operations.md").read_text().split("## Budgets", 1)[1]
    line = next(x for x in section.splitlines() if x.startswith("content-generation "))
    tail = re.escape(line.split("  no; ", 1)[1])
    return r"content-generation\s+\d+\s+\d+\s+\d+\s+\d+  no; " + re.sub(r"\d+s$", r"\\d+s", tail)


def admin_wait(prefix: str) -> str:
    from alchemy.queue.keys import QueueKeys

    return QueueKeys(prefix, QUEUE).wait


async def _openai_cost(db: asyncpg.Pool, brand_id: uuid.UUID) -> Decimal:
    cost: Decimal = await db.fetchval(
        "SELECT coalesce(sum(cost_usd), 0) FROM provider_calls"
        " WHERE brand_id = $1 AND provider = 'openai'",
        brand_id,
    )
    return cost


async def _record_in(admin: QueueAdmin, job_id: str, state: str) -> Any:
    record = await admin.record(QUEUE, job_id)
    return record if record is not None and record["state"] == state else None


async def _held(admin: QueueAdmin) -> dict[str, Any] | None:
    return (await admin.status(QUEUE)).held


async def _is(value: Any, expected: int) -> bool:
    return int(await value) == expected
