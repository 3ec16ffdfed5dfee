"""Brands' budgets on the admin API (issue 13), through aiohttp's test client against the
real Redis and PostgreSQL: read, set (the token needed), the brand's held jobs released at
once, refusals, and the budget gauges of /metrics."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
from redis.asyncio import Redis

from alchemy.config import parse_config
from alchemy.http.budgets import BUDGET_ROUTES, BudgetBook
from alchemy.http.deps import Access
from alchemy.ops.metrics import Metrics
from alchemy.queue.job import ErrorInfo, Meta, encode_envelope
from alchemy.queue.keys import QueueKeys
from tests.conftest import build_config_dict, queue_table
from tests.fakes.fixtures import database_url, db
from tests.handlers.support import create_brand
from tests.http.test_admin_api import AUTH, TOKEN, client_for

__all__ = ["client_for", "database_url", "db"]  # fixtures


def budget_config(prefix: str) -> Any:
    raw = build_config_dict(prefix, {**queue_table("q")})
    raw["http"] = {"admin_token": TOKEN}
    raw["budgets"] = {"daily_usd": 0.5}
    return parse_config(raw)


async def hold(redis: Redis, prefix: str, brand_id: uuid.UUID, job_id: str) -> None:
    """A job held for the brand's budget, as a worker leaves it in the delayed set."""
    message = f"budget_exhausted: brand {brand_id} daily budget $0.50 (spent ...)"
    meta = Meta(id=job_id, last_error=ErrorInfo("BudgetExhaustedError", message))
    envelope = encode_envelope(json.dumps({"id": job_id}).encode(), meta)
    await redis.zadd(QueueKeys(prefix, "q").delayed, {envelope: 4_000_000_000_000})


async def test_read_set_and_release(
    client_for: Any, redis: Redis, prefix: str, db: asyncpg.Pool
) -> None:
    config = budget_config(prefix)

    async def pool() -> asyncpg.Pool:
        return db

    metrics = Metrics()
    client = await client_for(config, budgets=BudgetBook(config, pool), metrics=metrics)
    brand_id, other = await create_brand(db), await create_brand(db, name="Other")
    await db.execute(
        "INSERT INTO provider_calls (id, job_id, work_key, queue, brand_id, owner_token,"
        " provider, model, fingerprint, outcome, cost_usd) VALUES (gen_random_uuid(), 'j',"
        " 'k', 'q', $1, 'o', 'anthropic', 'claude-sonnet-5-5', 'f', 'ok', 0.125)",
        brand_id,
    )
    await hold(redis, prefix, brand_id, "held-1")
    await hold(redis, prefix, other, "held-other")

    response = await client.get(f"/api/brands/{brand_id}/budget")
    assert response.status == 200
    body = await response.json()
    assert (body["source"], body["daily"]["budget_usd"], body["daily"]["spent_usd"]) == (
        "config",
        0.5,
        0.125,
    )
    assert body["daily"]["remaining_usd"] == 0.375
    assert body["monthly"]["budget_usd"] is None

    path = f"/api/brands/{brand_id}/budget"
    assert (await client.post(path, json={"daily_usd": 2})).status == 401
    response = await client.post(path, json={"daily_usd": 2, "monthly_usd": 30}, headers=AUTH)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert (body["source"], body["daily"]["budget_usd"], body["released"]) == ("brand", 2.0, 1)
    assert body["monthly"]["remaining_usd"] == 29.875
    waiting = [
        json.loads(item)["_alchemy"]["id"]
        for item in await redis.lrange(QueueKeys(prefix, "q").wait, 0, -1)
    ]
    assert waiting == ["held-1"]  # at once, and only this brand's
    assert await redis.zcard(QueueKeys(prefix, "q").delayed) == 1

    listed = await (await client.get("/api/budgets")).json()
    assert {b["brand_id"] for b in listed["brands"]} == {str(brand_id), str(other)}

    response = await client.get("/metrics")
    text = await response.text()
    scope = f'scope="brand:{brand_id}",window="daily"'
    assert f"alchemy_budget_usd{{{scope}}} 2.0" in text
    assert f"alchemy_budget_spent_usd{{{scope}}} 0.125" in text
    assert f"alchemy_budget_remaining_usd{{{scope}}} 1.875" in text
    assert f"brand:{other}" not in text  # on the default budget, nothing spent: no series


async def test_refusals(client_for: Any, prefix: str, db: asyncpg.Pool) -> None:
    config = budget_config(prefix)

    async def pool() -> asyncpg.Pool:
        return db

    client = await client_for(config, budgets=BudgetBook(config, pool))
    brand_id = await create_brand(db)
    cases = [
        (f"/api/brands/{uuid.uuid4()}/budget", {"daily_usd": 1}, 404),
        ("/api/brands/nope/budget", {"daily_usd": 1}, 400),
        (f"/api/brands/{brand_id}/budget", {"daily_usd": -1}, 400),
        (f"/api/brands/{brand_id}/budget", {"daily_usd": True}, 400),
        (f"/api/brands/{brand_id}/budget", {"weekly_usd": 1}, 400),
    ]
    for path, body, status in cases:
        response = await client.post(path, json=body, headers=AUTH)
        assert response.status == status, (path, body, await response.text())
        assert "error" in await response.json()
    assert (await client.get(f"/api/brands/{uuid.uuid4()}/budget")).status == 404
    without = await client_for(config)
    assert (await without.get("/api/budgets")).status == 404


def test_the_budget_routes_declare_their_access() -> None:
    declared = {(r.method, r.path): r.access for r in BUDGET_ROUTES}
    assert declared == {
        ("GET", "/api/budgets"): Access.COUNTS,
        ("GET", "/api/brands/{brand_id}/budget"): Access.COUNTS,
        ("POST", "/api/brands/{brand_id}/budget"): Access.CHANGE,
    }
