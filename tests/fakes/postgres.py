"""Test databases: one fresh database per test session on the machine's PostgreSQL
(``alchemy_test_<random>``, migrated from scratch, dropped at the end), and throwaway
clusters for tests that must stop and start a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.ports import free_port

ADMIN_URL: Final = os.environ.get(
    "ALCHEMY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TABLES: Final = (
    "provider_calls",
    "work_leases",
    "media",
    "research_runs",
    "contents",
    "content_queue",
    "ideas",
    "brands",
)


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


class SessionDatabase:
    """Created on first use, dropped when the last user releases it."""

    _users = 0
    name: str | None = None

    @classmethod
    def acquire(cls) -> str:
        if cls.name is None:
            cls.name = f"alchemy_test_{uuid.uuid4().hex[:12]}"
            asyncio.run(_create(cls.name))
        cls._users += 1
        return with_database(ADMIN_URL, cls.name)

    @classmethod
    def release(cls) -> None:
        cls._users -= 1
        if cls._users == 0 and cls.name is not None:
            name, cls.name = cls.name, None
            asyncio.run(_drop(name))


async def _create(name: str) -> None:
    from alchemy.db.migrate import migrate_url

    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')  # a generated name, not input
    finally:
        await conn.close()
    await migrate_url(with_database(ADMIN_URL, name))


async def _drop(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def empty_database() -> AsyncIterator[str]:
    """A new database with no tables (not migrated), dropped afterwards; yields its URL."""
    name = f"alchemy_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')  # a generated name, not input
    finally:
        await conn.close()
    try:
        yield with_database(ADMIN_URL, name)
    finally:
        await _drop(name)


async def truncate_all(conn: asyncpg.Connection) -> None:
    await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")


PG_BIN: Final = Path("/usr/lib/postgresql/15/bin")


class ThrowawayCluster:
    """A PostgreSQL cluster of our own on a free port (initdb refuses root, so it runs as
    the ``postgres`` user). Stopped with pg_ctl and deleted at :meth:`destroy`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="alchemy-pg-"))
        self.data = self.base / "data"
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            self.run_as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [*self.run_as, *args], check=True, capture_output=True, timeout=timeout, cwd="/"
        )

    def init(self) -> None:
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.base / "log"),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(pidfile.read_text().splitlines()[0])
        return None

    def destroy(self) -> None:
        if self.pid() is not None:
            with contextlib.suppress(subprocess.SubprocessError):
                self.stop("immediate")
        deadline = time.monotonic() + 10
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.base, ignore_errors=True)
