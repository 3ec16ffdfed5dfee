"""The shipped config.toml, with no API keys, runs all three queues offline: what
``make run`` does on a fresh machine (``migrate``, then ``run``), as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from alchemy.db import init_connection
from tests.conftest import REPO, WorkerProcess, wait_exited, wait_started
from tests.fakes.postgres import empty_database
from tests.handlers.support import create_brand, create_idea, create_request, push, wait_status


@pytest.fixture
async def fresh_database() -> Any:
    async with empty_database() as url:
        yield url


@pytest.mark.timeout(60)
async def test_shipped_config_runs_every_queue_offline(
    tmp_path: Path, fresh_database: str, redis: Redis, prefix: str
) -> None:
    text = (REPO / "config.toml").read_text()
    media = tmp_path / "media"
    config_path = tmp_path / "config.toml"
    config_path.write_text(text.replace('".local/media"', f'"{media}"'))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "ALCHEMY_CONFIG", "REDIS_URL"}
    }
    env.update(
        DATABASE_URL=fresh_database,
        ALCHEMY_REDIS_PREFIX=prefix,
        ALCHEMY_WORKER_NAME=f"shipped-{prefix}",
        PYTHONPATH=str(REPO),
    )
    migrated = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "alchemy", "--config", str(config_path), "migrate"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrated.returncode == 0, migrated.stderr
    worker = WorkerProcess(config_path, tmp_path / "worker.log", env)
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=2, init=init_connection)
    try:
        await wait_started(worker)
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
        assert (media / image["storage_path"]).is_file()
        body = await pool.fetchval("SELECT body FROM contents WHERE job_id = 's-c'")
        assert body.startswith("[OFFLINE DRAFT]")
        worker.signal(signal.SIGTERM)
        assert await wait_exited(worker) == 0
    finally:
        worker.kill()
        await pool.close()
