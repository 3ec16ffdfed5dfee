"""Rows created and jobs pushed the way the API does it, and reading the outcome."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from tests.conftest import wait_for
from tests.fakes.ai_server import FakeAI
from tests.fakes.fixtures import provider_settings

HANDLERS = {
    "content-generation": "alchemy.handlers.content:handle",
    "research": "alchemy.handlers.research:handle",
    "media-generation": "alchemy.handlers.media:handle",
}


def queue_tables(**overrides: Any) -> dict[str, Any]:
    """Every queue with its real handler, quick retries, one job at a time per process."""
    return {
        name: {
            "handler": handler,
            "concurrency": 1,
            "max_attempts": 3,
            "backoff_initial": 0.05,
            "backoff_max": 0.2,
            "backoff_jitter": 0.0,
            "timeout": 20.0,
            **overrides,
        }
        for name, handler in HANDLERS.items()
    }


CONTENT_REPLY = {
    "title": "Heat pumps keep working at -20 °C",
    "body": (
        "Cold climate heat pumps now keep homes warm when it is freezing outside. "
        "They move heat instead of making it, so your bills drop. "
        "Our installers have fitted hundreds in the north. Ask us how a heat pump fits your home."
    ),
    "hashtags": ["#HeatPumps", "energy", "  "],
    "call_to_action": "Book a free home check today.",
    "hook": "Still think heat pumps quit in the cold?",
    "image_prompt": "A snowy house with a heat pump outside, warm light in the windows",
}


async def create_brand(db: asyncpg.Pool, **fields: Any) -> uuid.UUID:
    values = {
        "name": "Northwind Heating",
        "voice": "plain-spoken expert",
        "tone": "warm",
        "audience": "homeowners in cold regions",
        "guidelines": "Use metric units.",
        "banned_phrases": ["game changer"],
        "default_provider": None,
        "default_model": None,
        **fields,
    }
    brand_id: uuid.UUID = await db.fetchval(
        "INSERT INTO brands (name, voice, tone, audience, guidelines, banned_phrases,"
        " default_provider, default_model) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        *values.values(),
    )
    return brand_id


async def create_idea(db: asyncpg.Pool, brand_id: uuid.UUID, **fields: Any) -> uuid.UUID:
    values = {
        "title": "Heat pumps in cold climates",
        "description": "Why modern heat pumps work in harsh winters",
        "keywords": ["heat pumps", "energy"],
        **fields,
    }
    idea_id: uuid.UUID = await db.fetchval(
        "INSERT INTO ideas (brand_id, title, description, keywords) VALUES ($1, $2, $3, $4)"
        " RETURNING id",
        brand_id,
        *values.values(),
    )
    return idea_id


async def create_request(
    db: asyncpg.Pool,
    brand_id: uuid.UUID,
    idea_id: uuid.UUID | None,
    platform: str = "linkedin",
    **fields: Any,
) -> uuid.UUID:
    row_id: uuid.UUID = await db.fetchval(
        "INSERT INTO content_queue (brand_id, idea_id, platform, provider, model, options)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        brand_id,
        idea_id,
        platform,
        fields.get("provider"),
        fields.get("model"),
        fields.get("options", {}),
    )
    return row_id


async def create_content_request(db: asyncpg.Pool, **request: Any) -> uuid.UUID:
    """A brand, an idea and a content_queue row for it."""
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    return await create_request(db, brand_id, idea_id, **request)


async def push(redis: Redis, prefix: str, queue: str, job_id: str, **data: Any) -> None:
    """LPUSH a job exactly as docs/protocol.md tells producers to."""
    await redis.lpush(QueueKeys(prefix, queue).wait, json.dumps({"id": job_id, **data}))


async def wait_status(
    db: asyncpg.Pool, table: str, row_id: Any, statuses: tuple[str, ...], within: float = 15
) -> asyncpg.Record:
    query = {
        "content_queue": "SELECT * FROM content_queue WHERE id = $1",
        "ideas": "SELECT * FROM ideas WHERE id = $1",
        "media": "SELECT * FROM media WHERE job_id = $1",
    }[table]

    async def done() -> asyncpg.Record | None:
        row = await db.fetchrow(query, row_id)
        return row if row is not None and row["status"] in statuses else None

    row: asyncpg.Record = await wait_for(done, within=within, interval=0.05)
    return row


async def drained(redis: Redis, prefix: str, *queues: str) -> bool:
    """Nothing waiting, delayed or being processed in ``queues`` (default: all three)."""
    for queue in queues or tuple(HANDLERS):
        keys = QueueKeys(prefix, queue)
        if await redis.llen(keys.wait) or await redis.zcard(keys.delayed):
            return False
        async for key in redis.scan_iter(match=keys.processing("*")):
            if await redis.llen(key):
                return False
    return True


def worker_sections(
    fake: FakeAI, database_url: str, media: Path, **providers: Any
) -> dict[str, Any]:
    """The config sections of a worker process running the real handlers on the fake."""
    return {
        "database": {"url": database_url, "pool_size": 4},
        "providers": provider_settings(fake, **providers),
        "media": {"directory": str(media), "allowed_hosts": [fake.origin]},
    }


async def dead_entries(redis: Redis, prefix: str, queue: str) -> list[dict[str, Any]]:
    return [json.loads(e) for e in await redis.lrange(QueueKeys(prefix, queue).dead, 0, -1)]


async def wait_dead(redis: Redis, prefix: str, queue: str, count: int = 1) -> list[dict[str, Any]]:
    async def enough() -> bool:
        return int(await redis.llen(QueueKeys(prefix, queue).dead)) >= count

    await wait_for(enough, within=15)
    return await dead_entries(redis, prefix, queue)
