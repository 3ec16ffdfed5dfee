"""Budgets in one worker process running the real handlers on the fake (issue 13): a call
whose worst case alone is more than the whole budget is dead-lettered before anything is
paid; a provider's daily cap over every brand holds that provider's calls while another
provider's flow; reservations are written to the ledger and settled to the actual cost."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import asyncpg
from redis.asyncio import Redis

from alchemy.paid.estimate import worst_text_cost
from alchemy.providers.prices import shipped_prices
from alchemy.queue.admin import QueueAdmin
from alchemy.queue.keys import QueueKeys
from tests.conftest import wait_for
from tests.fakes.ai_server import FakeAI
from tests.handlers.support import (
    create_brand,
    create_idea,
    create_request,
    push,
    wait_dead,
    wait_status,
)

Q = "content-generation"


async def test_a_call_bigger_than_the_whole_budget_is_dead_lettered_unpaid(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    row_id = await create_request(db, brand_id, await create_idea(db, brand_id))
    run_worker(make_app_config(budgets={"daily_usd": 0.001}))
    await push(redis, prefix, Q, "big-1", content_queue_id=str(row_id))
    [entry] = await wait_dead(redis, prefix, Q)
    assert entry["reason"] == "permanent_error"
    assert entry["error"]["type"] == "OverBudgetError"
    message = entry["error"]["message"]
    assert message.startswith(f"over_budget: brand {brand_id}: this call's worst case $")
    assert "is more than the whole daily budget of $0.00" in message
    assert entry["attempts"] == 1
    row = await wait_status(db, "content_queue", row_id, ("failed",))
    assert "over_budget" in row["error"]
    assert not fake_ai.calls
    assert not await db.fetchval("SELECT count(*) FROM provider_calls")


async def test_a_providers_daily_cap_holds_its_calls_and_another_provider_flows(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    rows = [await create_request(db, brand_id, idea_id) for _ in range(3)]
    # $0.10 a day for Anthropic (a call's worst case is about $0.07); OpenAI has no cap.
    run_worker(make_app_config(budgets={"anthropic_daily_usd": 0.1, "recheck": 30.0}))
    await push(redis, prefix, Q, "a-1", content_queue_id=str(rows[0]))
    await wait_status(db, "content_queue", rows[0], ("completed",))
    await db.execute(  # another brand's spend today: less than a worst case is left
        "INSERT INTO provider_calls (id, job_id, work_key, queue, owner_token, provider,"
        " model, fingerprint, outcome, cost_usd)"
        " VALUES (gen_random_uuid(), 'x', 'x', 'q', 'o', 'anthropic', 'claude-sonnet-5-5',"
        " 'f', 'ok', 0.05)"
    )
    await push(redis, prefix, Q, "a-2", content_queue_id=str(rows[1]))
    await push(redis, prefix, Q, "o-1", content_queue_id=str(rows[2]), provider="openai")
    await wait_status(db, "content_queue", rows[2], ("completed",))
    admin = QueueAdmin(redis, prefix=prefix)

    async def held() -> dict[str, int] | None:
        return (await admin.status(Q)).budget_held or None

    assert await wait_for(held) == {"provider:anthropic": 1}
    [waiting] = await redis.zrange(QueueKeys(prefix, Q).delayed, 0, -1)
    meta = json.loads(waiting)["_alchemy"]
    assert (meta["id"], meta["attempt"]) == ("a-2", 1)
    assert meta["last_error"]["type"] == "BudgetExhaustedError"
    assert (
        "budget_exhausted: provider anthropic daily budget $0.10" in meta["last_error"]["message"]
    )
    assert [c.endpoint for c in fake_ai.calls] == ["messages", "chat"]
    calls = await db.fetch("SELECT * FROM provider_calls WHERE job_id <> 'x'")
    for call in calls:  # each reserved its worst case, then settled to what it cost
        assert call["outcome"] == "ok"
        assert call["reserved_usd"] >= call["cost_usd"] > 0
    # Raising nothing but waiting is the window's business; releasing the scope by hand
    # (what a raise does) runs it at once, and the cap still has no room: held again.
    assert await admin.release_budget_holds([Q], "provider anthropic") == 1
    await wait_for(held)
    assert len(fake_ai.calls) == 2


def test_the_worst_case_covers_every_byte_and_max_tokens() -> None:
    from alchemy.content.schemas import ContentDraft
    from alchemy.providers.base import TextRequest

    request = TextRequest("system é", "prompt", ContentDraft, "claude-sonnet-5-5", max_tokens=300)
    worst = worst_text_cost(shipped_prices(), request, 4096)
    assert worst is not None
    price = shipped_prices().price_of("claude-sonnet-5-5")
    assert price is not None
    schema_bytes = len(__import__("json").dumps(ContentDraft.model_json_schema()).encode())
    tokens_in = len("system é".encode()) + len(b"prompt") + schema_bytes + 500
    assert worst >= price.cost(tokens_in - 10, 300, 0)
    assert worst == price.cost(tokens_in, 300, 0)
    assert worst_text_cost(shipped_prices(), request, 4096) > Decimal(0)
    unpriced = TextRequest("s", "p", ContentDraft, "no-such-model")
    assert worst_text_cost(shipped_prices(), unpriced, 4096) is None


async def test_an_image_reserves_its_worst_case_too(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    """A media job's image: 10,000 output tokens at gpt-image-1.5's $40 a million are more
    than a $0.30 budget, so it is never sent; a brand with room gets its image."""
    poor, rich = await create_brand(db), await create_brand(db, name="Rich")
    await db.execute(
        "INSERT INTO brand_budgets (brand_id, daily_usd) VALUES ($1, 0.30), ($2, 5)", poor, rich
    )
    run_worker(make_app_config())
    await push(redis, prefix, "media-generation", "img-p", brand_id=str(poor), prompt="a house")
    [entry] = await wait_dead(redis, prefix, "media-generation")
    assert entry["error"]["type"] == "OverBudgetError"
    assert "(openai gpt-image-1.5)" in entry["error"]["message"]
    assert not fake_ai.calls
    await push(redis, prefix, "media-generation", "img-r", brand_id=str(rich), prompt="a house")
    await wait_status(db, "media", "img-r", ("completed",))
    call = await db.fetchrow("SELECT * FROM provider_calls WHERE job_id = 'img-r'")
    assert call["reserved_usd"] > Decimal("0.40") > call["cost_usd"]
