"""Schema migrations: ordered SQL files shipped in this package, applied once each.

Files live in ``alchemy/db/migrations/`` and are named ``NNNN_what_it_does.sql``; the
number is the version. Each pending file runs in its own transaction together with the
row that records it in ``schema_migrations``, so a file is either applied and recorded or
neither. The whole run holds a session advisory lock, so processes that start at the same
time apply every file exactly once: the others wait, then find nothing left to do.

An applied file must never change: its sha256 is recorded, and a mismatch stops the run
with :class:`MigrationError` rather than leaving the schema and the code out of step.
Versions in the database that this code does not know (a newer release ran) are left
alone and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import asyncpg
import structlog

from alchemy.errors import AlchemyError

log = structlog.get_logger("alchemy.migrate")

# pg_advisory_lock key: the first 8 bytes of sha256("alchemy.schema_migrations"), signed.
LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"alchemy.schema_migrations").digest()[:8], "big", signed=True
)
FILE_PATTERN: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CREATE_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(AlchemyError):
    """The migrations in the package and the ones recorded in the database disagree."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str


@dataclass(frozen=True, slots=True)
class MigrationReport:
    applied: tuple[Migration, ...]
    current_version: int
    unknown_versions: tuple[int, ...]


def load_migrations() -> list[Migration]:
    """Every migration file in the package, in version order."""
    folder = resources.files("alchemy.db") / "migrations"
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = FILE_PATTERN.match(entry.name)
        if not match:
            continue
        raw = entry.read_bytes()
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migration files have version {version:04d}")
        found[version] = Migration(
            version=version,
            name=match.group(2),
            sql=raw.decode("utf-8"),
            checksum=hashlib.sha256(raw).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


async def migrate(conn: Any, migrations: list[Migration] | None = None) -> MigrationReport:
    """Apply the pending migrations on ``conn`` (an asyncpg connection), under the lock."""
    wanted = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(CREATE_TABLE)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        recorded = {row["version"]: row for row in rows}
        _check_recorded(wanted, recorded)
        applied = []
        for migration in wanted:
            if migration.version in recorded:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("migration_applied", version=migration.version, name=migration.name)
            applied.append(migration)
    finally:
        # A lost connection has dropped the lock with it.
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    known = {m.version for m in wanted}
    unknown = tuple(sorted(set(recorded) - known))
    if unknown:
        log.warning("migrations_newer_than_code", versions=list(unknown))
    versions = known | set(recorded)
    return MigrationReport(tuple(applied), max(versions, default=0), unknown)


def _check_recorded(wanted: list[Migration], recorded: dict[int, Any]) -> None:
    for migration in wanted:
        row = recorded.get(migration.version)
        if row is not None and row["checksum"] != migration.checksum:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name} was changed after it was"
                " applied; add a new migration instead of editing an applied one"
            )


async def migrate_url(url: str, *, connect_timeout: float = 30.0) -> MigrationReport:
    """Connect to ``url``, apply the pending migrations, disconnect."""
    conn = await asyncpg.connect(url, timeout=connect_timeout)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def migrate_at_startup(url: str, *, within: float = 30.0) -> MigrationReport:
    """:func:`migrate_url`, retrying while the database is unreachable for up to ``within``
    seconds (a worker and its database often start together)."""
    from alchemy.db import is_transient_db_error

    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.2
    while True:
        try:
            return await migrate_url(url)
        except Exception as exc:
            if not is_transient_db_error(exc) or loop.time() + delay > deadline:
                if is_transient_db_error(exc):
                    raise MigrationError(
                        f"database unreachable for migrations: {type(exc).__name__}: {exc}"
                    ) from exc
                raise
            log.warning("migrate_waiting_for_database", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
