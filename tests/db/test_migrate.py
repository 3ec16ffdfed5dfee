"""The migration runner: from scratch, idempotent, one applier among concurrent starts,
edited files refused, and the ``migrate`` command."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from alchemy.config import parse_config
from alchemy.db.migrate import MigrationError, load_migrations, migrate, migrate_url
from alchemy.queue.keys import QueueKeys
from tests.conftest import REPO, build_config_dict, queue_table, wait_for
from tests.fakes.postgres import empty_database as new_empty_database
from tests.ports import free_port

EXPECTED_TABLES = {
    "schema_migrations",
    "brands",
    "ideas",
    "content_queue",
    "contents",
    "research_runs",
    "media",
    "work_leases",
    "provider_calls",
    "brand_budgets",
}


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    async with new_empty_database() as url:
        yield url


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row["tablename"] for row in rows}
    finally:
        await conn.close()


def test_migrations_are_numbered_files_in_the_package() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "initial"
    assert all(len(m.checksum) == 64 for m in migrations)


async def test_a_fresh_database_is_migrated_and_a_second_run_does_nothing(
    empty_database: str,
) -> None:
    first = await migrate_url(empty_database)
    assert [m.version for m in first.applied] == [m.version for m in load_migrations()]
    assert await tables(empty_database) == EXPECTED_TABLES
    second = await migrate_url(empty_database)
    assert second.applied == ()
    assert second.current_version == first.current_version
    conn = await asyncpg.connect(empty_database)
    try:
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY 1")
    finally:
        await conn.close()
    assert [(r["version"], r["name"]) for r in rows] == [
        (1, "initial"),
        (2, "paid_work"),
        (3, "media_store"),
        (4, "budgets"),
        (5, "offline_output"),
    ]
    assert [r["checksum"] for r in rows] == [m.checksum for m in load_migrations()]


async def test_concurrent_starts_apply_each_migration_once(empty_database: str) -> None:
    reports = await asyncio.gather(*(migrate_url(empty_database) for _ in range(6)))
    assert sum(len(r.applied) for r in reports) == len(load_migrations())
    assert await tables(empty_database) == EXPECTED_TABLES


async def test_an_applied_migration_that_changed_is_refused(empty_database: str) -> None:
    await migrate_url(empty_database)
    edited = [replace(m, checksum="0" * 64) for m in load_migrations()]
    conn = await asyncpg.connect(empty_database)
    try:
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, edited)
        # The lock was released: another run goes through.
        assert (await migrate(conn)).applied == ()
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_behind(empty_database: str) -> None:
    broken = [
        *load_migrations(),
        replace(load_migrations()[0], version=999, name="broken", sql="CREATE TABLE x (; "),
    ]
    conn = await asyncpg.connect(empty_database)
    try:
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await migrate(conn, broken)
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
    finally:
        await conn.close()
    # Every shipped migration kept, 999 rolled back.
    assert [v["version"] for v in versions] == [m.version for m in load_migrations()]


def run_cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ALCHEMY_CONFIG"}
    env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "alchemy", "--config", str(REPO / "config.toml"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_migrate_command(empty_database: str) -> None:
    done = await asyncio.to_thread(run_cli, "migrate", database_url=empty_database)
    assert done.returncode == 0, done.stderr
    applied = ", ".join(f"{m.version:04d}_{m.name}" for m in load_migrations())
    assert f"applied now: {applied}" in done.stdout
    again = await asyncio.to_thread(run_cli, "migrate", database_url=empty_database)
    assert again.returncode == 0, again.stderr
    assert "applied now: none" in again.stdout
    assert await tables(empty_database) == EXPECTED_TABLES


async def test_migrate_command_without_a_database_exits_69() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    done = await asyncio.to_thread(run_cli, "migrate", database_url=url)
    assert done.returncode == 69, done.stderr
    assert "database unreachable" in done.stderr


async def test_a_worker_with_migrate_on_start_migrates_before_it_consumes(
    empty_database: str, redis: Any, prefix: str, run_worker: Any
) -> None:
    raw = build_config_dict(
        prefix,
        queue_table("q"),
        database={"url": empty_database, "migrate_on_start": True},
    )
    config = parse_config(raw)
    run_worker(config)
    await wait_for(lambda: redis.zscore(QueueKeys(prefix, "q").consumers, config.worker.identity))
    assert await tables(empty_database) == EXPECTED_TABLES
