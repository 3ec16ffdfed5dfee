"""The shipped config.toml as a new user runs it, as real processes (``migrate``, then
``run``): with no API keys all three queues run offline, say so at startup and flag every
row they write (docs/schema.md's "Offline output" queries find them); with both keys in the
environment, as the original workers were configured, the real providers are used (here the
fake AI server, through the base URLs)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from alchemy.config import ENV_OVERRIDES
from alchemy.db import init_connection
from tests.conftest import REPO, WorkerProcess, wait_exited, wait_started
from tests.fakes.ai_server import FakeAI
from tests.fakes.fixtures import ANTHROPIC_KEY, OPENAI_KEY
from tests.fakes.postgres import empty_database
from tests.handlers.support import create_brand, create_idea, create_request, push, wait_status

SCHEMA = REPO / "docs" / "schema.md"
FENCE = re.compile(r"^```sql\n(.*?)^```$", re.MULTILINE | re.DOTALL)
FLAGGED_TABLES = ("content_queue", "contents", "ideas", "research_runs", "media")


def schema_example(name: str) -> str:
    """The SQL block of docs/schema.md whose first line is ``-- schema-example: NAME``."""
    marker = f"-- schema-example: {name}"
    blocks = [body for body in FENCE.findall(SCHEMA.read_text()) if body.startswith(marker)]
    assert len(blocks) == 1, f"expected one block marked {marker!r}, found {len(blocks)}"
    return str(blocks[0])


def named(worker: WorkerProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in worker.events() if line.get("event") == event]


@pytest.fixture
async def fresh_database() -> AsyncIterator[str]:
    async with empty_database() as url:
        yield url


def shipped_config(tmp_path: Path, **replace: str) -> Path:
    """config.toml as shipped, its media directory here and ``replace``'s lines changed."""
    text = (REPO / "config.toml").read_text().replace('".local/media"', f'"{tmp_path}/media"')
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def user_env(database_url: str, prefix: str, **keys: str) -> dict[str, str]:
    """A user's environment: none of alchemy's variables but the database, a private
    prefix and worker name, and ``keys``."""
    drop = {*ENV_OVERRIDES, "ALCHEMY_CONFIG"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        DATABASE_URL=database_url,
        ALCHEMY_REDIS_PREFIX=prefix,
        ALCHEMY_WORKER_NAME=f"shipped-{prefix}",
        PYTHONPATH=str(REPO),
        **keys,
    )
    return env


async def alchemy(config_path: Path, env: dict[str, str], command: str) -> str:
    """``python -m alchemy COMMAND``'s standard output; it must succeed."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "alchemy", "--config", str(config_path), command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def run_every_queue(
    config_path: Path, env: dict[str, str], database_url: str, redis: Redis, prefix: str
) -> tuple[WorkerProcess, dict[str, Any]]:
    """Migrate, start the worker, run a research job, a content job with an image and a
    thumbnail cut from that image; the worker (stopped) and the ids."""
    await alchemy(config_path, env, "migrate")
    worker = WorkerProcess(config_path, config_path.parent / "worker.log", env)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2, init=init_connection)
    try:
        await wait_started(worker)
        status = await alchemy(config_path, env, "status")
        brand_id = await create_brand(pool)
        idea_id = await create_idea(pool, brand_id)
        row_id = await create_request(pool, brand_id, idea_id, platform="instagram")
        await push(redis, prefix, "research", "s-r", idea_id=str(idea_id), type="full")
        await push(
            redis, prefix, "content-generation", "s-c", content_queue_id=str(row_id), media=True
        )
        await wait_status(pool, "content_queue", row_id, ("completed",), within=30)
        await wait_status(pool, "ideas", idea_id, ("researched",), within=30)
        image = await wait_status(pool, "media", "s-c:media", ("completed",), within=30)
        await push(
            redis,
            prefix,
            "media-generation",
            "s-t",
            brand_id=str(brand_id),
            kind="thumbnail",
            source_media_id=str(image["id"]),
        )
        await wait_status(pool, "media", "s-t", ("completed",), within=30)
        worker.signal(signal.SIGTERM)
        assert await wait_exited(worker) == 0
    finally:
        worker.kill()
        await pool.close()
    return worker, {"row": row_id, "idea": idea_id, "status": status}


@pytest.mark.timeout(60)
async def test_shipped_config_without_keys_runs_offline_says_so_and_flags_every_row(
    tmp_path: Path, fresh_database: str, redis: Redis, prefix: str
) -> None:
    config_path = shipped_config(tmp_path)
    env = user_env(fresh_database, prefix)
    worker, ids = await run_every_queue(config_path, env, fresh_database, redis, prefix)

    warning = named(worker, "offline_provider_in_use")
    assert len(warning) == 1, worker.log_path.read_text()
    assert warning[0]["level"] == "warning"
    assert warning[0]["uses"] == ["text", "image"]
    assert warning[0]["text_provider"] == "auto -> offline"
    # `status` shows what the running process uses (its heartbeat), not only the config.
    processes = [line for line in ids["status"].splitlines() if f"shipped-{prefix}" in line]
    assert len(processes) == 3, ids["status"]
    assert all(line.endswith(" OFFLINE (text, image)") for line in processes), processes

    conn = await asyncpg.connect(fresh_database)
    try:
        assert (await conn.fetchval("SELECT body FROM contents")).startswith("[OFFLINE DRAFT]")
        for table in FLAGGED_TABLES:
            flags = await conn.fetch(f"SELECT offline FROM {table}")
            assert flags, table
            assert all(row["offline"] for row in flags), table
        counts = dict(await conn.fetch(schema_example("offline-output")))
        assert set(counts) == set(FLAGGED_TABLES)
        assert counts["content_queue"] == counts["contents"] == counts["ideas"] == 1
        assert counts["research_runs"] >= 1
        assert counts["media"] == 2  # the image and its thumbnail, cut locally
        thumbnail = await conn.fetchrow("SELECT provider, offline FROM media WHERE job_id = 's-t'")
        assert tuple(thumbnail) == ("local", True)
        requests = await conn.fetch(schema_example("offline-content-requests"))
        assert [r["content_queue_id"] for r in requests] == [ids["row"]]
        # Deleting the content clears its request's flag: it can be generated again.
        await conn.execute("DELETE FROM contents")
        assert await conn.fetch(schema_example("offline-content-requests")) == []
        assert not await conn.fetchval("SELECT offline FROM content_queue")
    finally:
        await conn.close()


@pytest.mark.timeout(60)
async def test_shipped_config_with_both_keys_uses_the_real_providers(
    tmp_path: Path, fresh_database: str, redis: Redis, prefix: str, fake_ai: FakeAI
) -> None:
    # Only the base URLs change: the keys come from the environment, as the original
    # workers documented.
    config_path = shipped_config(
        tmp_path,
        **{
            'anthropic_base_url = ""': f'anthropic_base_url = "{fake_ai.anthropic_base_url}"',
            'openai_base_url = ""': f'openai_base_url = "{fake_ai.openai_base_url}"',
        },
    )
    env = user_env(
        fresh_database, prefix, ANTHROPIC_API_KEY=ANTHROPIC_KEY, OPENAI_API_KEY=OPENAI_KEY
    )
    worker, ids = await run_every_queue(config_path, env, fresh_database, redis, prefix)

    assert named(worker, "offline_provider_in_use") == []
    assert "OFFLINE" not in ids["status"]
    chosen = named(worker, "providers_in_use")
    assert len(chosen) == 1
    assert (chosen[0]["text_provider"], chosen[0]["image_provider"]) == (
        "auto -> anthropic",
        "auto -> openai",
    )
    assert fake_ai.count("messages") >= 2  # research and content
    assert fake_ai.count("images") == 1
    log = worker.log_path.read_text()
    assert ANTHROPIC_KEY not in log
    assert OPENAI_KEY not in log
    conn = await asyncpg.connect(fresh_database)
    try:
        assert await conn.fetchval("SELECT provider FROM contents") == "anthropic"
        assert await conn.fetchval("SELECT provider FROM media") == "openai"
        counts = dict(await conn.fetch(schema_example("offline-output")))
        assert counts == dict.fromkeys(FLAGGED_TABLES, 0)
    finally:
        await conn.close()
