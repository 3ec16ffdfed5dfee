"""Spend budgets per brand with real worker processes, the real Anthropic SDK against the
fake, real Redis and PostgreSQL (issue 13, acceptance 1, 2 and 5): a brand whose daily
budget covers about ten content jobs gets 40 of them over three processes of concurrency
three; the calls the fake is paid for stay within the budget, the rest are held
(``budget_exhausted``, no attempt spent) while another brand's ten jobs complete; the budget
raised through the CLI releases the held jobs at once; and ``alchemy spend --json`` and
``/metrics`` agree with the ledger to the cent."""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from alchemy.queue.admin import QueueAdmin
from alchemy.queue.keys import QueueKeys
from tests.conftest import REPO, wait_for, wait_started
from tests.fakes.ai_server import FakeAI
from tests.handlers.support import queue_tables
from tests.ports import free_port
from tests.process.budgets import (
    CALL_USD,
    QUEUE,
    brand_with_rows,
    budget_held,
    cli_config,
    completed,
    ledger_cost,
    metric,
    peak_commitment,
    push_rows,
    run_cli,
    scrape,
    sections,
)

BUDGET = 10 * CALL_USD  # $0.06: about ten content jobs
RECHECK = 3.0  # seconds between two looks of a held job (a raise must not wait for it)


def documented_message() -> str:
    """The held job's message in docs/operations.md's log line, as a pattern (its brand,
    amounts and time vary)."""
    section = (REPO / "docs" / "operations.md").read_text().split("## Budgets", 1)[1]
    line = next(x for x in section.splitlines() if '"reason":"budget_exhausted"' in x)
    message = json.loads(line)["error_message"]
    pattern = re.escape(message)
    for value in re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}|\$[0-9.]+|\d{4}-[\dT:+-]+", message):
        kind = r"[0-9a-f-]{36}" if "-" in value and len(value) == 36 else r"\$?[0-9.]+"
        if value[:4].isdigit():
            kind = r"[\dT:+-]+"
        pattern = pattern.replace(re.escape(value), kind, 1)
    return pattern


def brand_calls(fake: FakeAI, call_ids: set[str]) -> int:
    return sum(1 for call_id in fake.call_ids("messages") if call_id in call_ids)


async def ids_of(db: asyncpg.Pool, brand_id: Any) -> set[str]:
    rows = await db.fetch("SELECT id FROM provider_calls WHERE brand_id = $1", brand_id)
    return {str(row["id"]) for row in rows}


@pytest.mark.timeout(180)
async def test_a_brand_out_of_money_is_held_while_another_flows_and_a_raise_frees_it(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    database_url: str,
    spawn_worker: Any,
    tmp_path: Path,
) -> None:
    budgets = {"recheck": RECHECK}
    cli = cli_config(tmp_path, prefix, database_url, budgets)
    thrifty, thrifty_rows = await brand_with_rows(db, "Thrifty Heating", 40)
    other, other_rows = await brand_with_rows(db, "Other Heating", 10)
    status, out, err = await run_cli(cli, "budget", "set", str(thrifty), "--daily", str(BUDGET))
    assert (status, err) == (0, ""), err
    assert "daily 0.0600: spent 0.0000" in out

    fake_ai.delay = 0.3
    kw = sections(fake_ai, database_url, tmp_path / "media", budgets)
    port = free_port()
    queues = queue_tables(concurrency=3, timeout=30.0)
    # One worker serves HTTP (the metrics read below): one port, one listener.
    http: list[dict[str, Any]] = [{}, {"http": {"port": port}}, {}]
    workers = [spawn_worker(queues, {"name": f"b{n}"}, **kw, **http[n]) for n in range(3)]
    for worker in workers:
        await wait_started(worker)
    started = time.monotonic()
    held_ids = await push_rows(redis, prefix, "t", thrifty_rows)
    await push_rows(redis, prefix, "o", other_rows)

    # -- acceptance 1: within the budget; the rest held, no attempt spent; the other flows
    await wait_for(lambda: _count(completed(db, other), 10), within=60)
    other_done_s = time.monotonic() - started

    async def settled() -> bool:
        """Nothing in flight, no room left for one more worst case, every job done or held."""
        in_flight = await db.fetchval(
            "SELECT count(*) FROM provider_calls WHERE brand_id = $1 AND outcome = 'in_flight'",
            thrifty,
        )
        _, largest = await peak_commitment(db, thrifty)
        if in_flight or BUDGET - await ledger_cost(db, thrifty) >= largest:
            return False
        done = await completed(db, thrifty)
        return done + await budget_held(redis, prefix, thrifty) == 40

    await wait_for(settled, within=60, interval=0.2)
    done = await completed(db, thrifty)
    held = await budget_held(redis, prefix, thrifty)
    spent = await ledger_cost(db, thrifty)
    paid_calls = brand_calls(fake_ai, await ids_of(db, thrifty))
    peak, largest = await peak_commitment(db, thrifty)
    print(
        f"\nbudget ${BUDGET}: {done} completed, {held} held; the fake was paid for"
        f" {paid_calls} calls = ${paid_calls * CALL_USD} (ledger ${spent}); worst case of one"
        f" call ${largest}; peak of spent + reserved ${peak}; other brand's 10 done in"
        f" {other_done_s:.1f}s"
    )
    assert paid_calls * CALL_USD == spent <= BUDGET
    assert peak <= BUDGET
    assert BUDGET - spent < largest  # the money ran out: not one more worst case fits
    assert done == paid_calls >= 5
    assert held == 40 - done
    admin = QueueAdmin(redis, prefix=prefix)
    held_records = [r for j in held_ids if (r := await admin.record(QUEUE, j)) is not None]
    waiting = [r for r in held_records if r["state"] == "deferred"]
    assert len(waiting) >= held - 9  # (a few may be in a look right now)
    documented = documented_message()
    for record in waiting:
        assert record["reason"] == "budget_exhausted"
        assert record["attempt"] == 1
        assert re.fullmatch(documented, record["last_error"]["message"]), record["last_error"]
    events = await redis.xrange(QueueKeys(prefix, QUEUE).events)
    reasons = [fields.get(b"reason") for _, fields in events]
    assert b"budget_exhausted" in reasons
    text = await scrape(port)
    scope = f"brand:{thrifty}"
    assert metric(text, "alchemy_queue_budget_held", queue=QUEUE, scope=scope) == held
    assert (metric(text, "alchemy_budget_holds_total", queue=QUEUE) or 0) > 0
    status, out, _ = await run_cli(cli, "status", "--json")
    statuses = json.loads(out)["queues"]
    assert statuses[0]["budget_held"] == {scope: held}
    assert not await db.fetchval(
        "SELECT count(*) FROM content_queue WHERE brand_id = $1 AND status = 'failed'", thrifty
    )

    # -- acceptance 2: the budget raised through the CLI: the held jobs run at once
    calls_before = len(fake_ai.calls)
    raised = time.monotonic()
    status, out, err = await run_cli(cli, "budget", "set", str(thrifty), "--daily", "1")
    assert (status, err) == (0, ""), err
    assert "held jobs released:" in out
    await wait_for(lambda: len(fake_ai.calls) > calls_before, within=RECHECK)
    first_call_s = fake_ai.calls[calls_before].at - raised
    await wait_for(lambda: _count(completed(db, thrifty), 40), within=60)
    all_done_s = time.monotonic() - raised
    print(
        f"raised: first call {first_call_s:.2f}s after the CLI started, all 40 in {all_done_s:.1f}s"
    )
    assert first_call_s < 1.5 < RECHECK

    # -- acceptance 5: alchemy spend --json and /metrics agree with the ledger to the cent
    spent = await ledger_cost(db, thrifty)
    total = await ledger_cost(db)
    assert total == len(fake_ai.calls) * CALL_USD
    status, out, _ = await run_cli(cli, "spend", "--brand", str(thrifty), "--json")
    assert Decimal(str(json.loads(out)["total"]["cost_usd"])).quantize(Decimal("0.01")) == (
        spent.quantize(Decimal("0.01"))
    )
    status, out, _ = await run_cli(cli, "spend", "--by", "brand", "--json")
    by_brand = {line["brand"]: line["cost_usd"] for line in json.loads(out)["brands"]}
    assert round(by_brand[str(thrifty)], 2) == round(float(spent), 2)
    assert round(by_brand[str(other)], 2) == round(float(await ledger_cost(db, other)), 2)
    await wait_for(lambda: _settled_metrics(port, scope, spent), within=5)
    status, out, _ = await run_cli(cli, "budget", "show", "--brand", str(thrifty), "--json")
    shown = json.loads(out)["brands"][0]["daily"]
    assert round(shown["spent_usd"], 2) == round(float(spent), 2)
    assert round(shown["remaining_usd"], 2) == round(float(Decimal(1) - spent), 2)


async def _settled_metrics(port: int, scope: str, spent: Decimal) -> bool:
    text = await scrape(port)
    shown = metric(text, "alchemy_budget_spent_usd", scope=scope, window="daily")
    left = metric(text, "alchemy_budget_remaining_usd", scope=scope, window="daily")
    if shown is None or left is None:
        return False
    cent = Decimal("0.01")
    return Decimal(str(shown)).quantize(cent) == spent.quantize(cent) and (
        Decimal(str(left)).quantize(cent) == (Decimal(1) - spent).quantize(cent)
    )


async def _count(value: Any, expected: int) -> bool:
    return int(await value) == expected
