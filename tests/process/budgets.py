"""What the budget tests share: brands with their content rows, the workers' config
sections, the CLI, and reading the held jobs, the ledger and /metrics."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis

from alchemy.queue.admin import QueueAdmin
from alchemy.queue.keys import QueueKeys
from tests.conftest import REPO, build_config_dict, to_toml
from tests.fakes.ai_server import FakeAI
from tests.handlers.support import create_brand, create_idea, worker_sections
from tests.ops.test_cli import clean_env

QUEUE = "content-generation"
MODEL = "claude-sonnet-5-5"
# Every good reply of the fake reports this usage: $0.003 + $0.003 = $0.006 a call.
INPUT_TOKENS = 1000
OUTPUT_TOKENS = 200
CALL_USD = Decimal(INPUT_TOKENS) * 3 / 10**6 + Decimal(OUTPUT_TOKENS) * 15 / 10**6


async def brand_with_rows(db: asyncpg.Pool, name: str, count: int) -> tuple[uuid.UUID, list[str]]:
    brand_id = await create_brand(db, name=name)
    idea_id = await create_idea(db, brand_id)
    rows = await db.fetch(
        "INSERT INTO content_queue (brand_id, idea_id, platform)"
        " SELECT $1, $2, 'linkedin' FROM generate_series(1, $3) RETURNING id",
        brand_id,
        idea_id,
        count,
    )
    return brand_id, [str(row["id"]) for row in rows]


async def push_rows(redis: Redis, prefix: str, tag: str, rows: list[str]) -> list[str]:
    jobs = [{"id": f"{tag}-{n}", "content_queue_id": row} for n, row in enumerate(rows)]
    await redis.lpush(QueueKeys(prefix, QUEUE).wait, *(json.dumps(job) for job in jobs))
    return [job["id"] for job in jobs]


def sections(
    fake: FakeAI, database_url: str, media: Path, budgets: dict[str, Any], **providers: Any
) -> dict[str, Any]:
    fake.input_tokens, fake.output_tokens = INPUT_TOKENS, OUTPUT_TOKENS
    kw = worker_sections(fake, database_url, media, max_tokens=256, **providers)
    return {**kw, "budgets": budgets}


def cli_config(
    tmp_path: Path, prefix: str, database_url: str, budgets: dict[str, Any], **sections: Any
) -> Path:
    path = tmp_path / "cli.toml"
    queues = {QUEUE: {"handler": "alchemy.handlers.content:handle"}}
    raw = build_config_dict(
        prefix, queues, database={"url": database_url}, budgets=budgets, **sections
    )
    path.write_text(to_toml(raw))
    return path


async def run_cli(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alchemy",
        "--config",
        str(config),
        *args,
        cwd=REPO,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def budget_held(redis: Redis, prefix: str, brand_id: uuid.UUID) -> int:
    status = await QueueAdmin(redis, prefix=prefix).status(QUEUE)
    return status.budget_held.get(f"brand:{brand_id}", 0)


async def completed(db: asyncpg.Pool, brand_id: uuid.UUID) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM content_queue WHERE brand_id = $1 AND status = 'completed'",
            brand_id,
        )
    )


async def ledger_cost(db: asyncpg.Pool, brand_id: uuid.UUID | None = None) -> Decimal:
    cost: Decimal = await db.fetchval(
        "SELECT coalesce(sum(cost_usd), 0) FROM provider_calls"
        " WHERE $1::uuid IS NULL OR brand_id = $1",
        brand_id,
    )
    return cost


async def peak_commitment(db: asyncpg.Pool, brand_id: uuid.UUID) -> tuple[Decimal, Decimal]:
    """The most the brand's window ever had committed, as the ledger replays it: at each
    reservation, what was spent by calls finished before it plus what calls in flight then
    had reserved (their own included); and the largest single reservation."""
    rows = await db.fetch(
        "SELECT started_at, finished_at, cost_usd, reserved_usd FROM provider_calls"
        " WHERE brand_id = $1 ORDER BY started_at",
        brand_id,
    )
    peak = Decimal(0)
    for row in rows:
        at = row["started_at"]
        spent = sum(
            (r["cost_usd"] or 0 for r in rows if r["finished_at"] and r["finished_at"] <= at),
            Decimal(0),
        )
        reserved = sum(
            (
                r["reserved_usd"] or 0
                for r in rows
                if r["started_at"] <= at and (r["finished_at"] is None or r["finished_at"] > at)
            ),
            Decimal(0),
        )
        peak = max(peak, spent + reserved)
    largest = max((r["reserved_usd"] or Decimal(0) for r in rows), default=Decimal(0))
    return peak, largest


async def scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return await response.text()


def metric(text: str, name: str, **labels: str) -> float | None:
    """The sample of ``name`` whose labels include ``labels`` (None: no such sample)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        found = dict(part.split("=", 1) for part in head[len(name) + 1 : -1].split('",'))
        found = {k: v.strip('"') for k, v in found.items()}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None
