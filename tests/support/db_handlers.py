"""A handler that needs PostgreSQL (``REQUIRES = ("postgres",)``), for the engine's
dependency-hold tests: each job runs one query through the process's asyncpg pool and
records its start and its end in the test Redis, like ``tests.support.handlers.scripted``.

Job data: ``record`` (list key), ``sleep`` (seconds the query sleeps, default 0.05)."""

from __future__ import annotations

from alchemy.db import TRANSIENT_DB_ERRORS
from alchemy.errors import DependencyUnavailableError
from alchemy.queue.job import Job
from alchemy.services import current_services
from tests.support.handlers import record

REQUIRES = ("postgres",)


async def query(job: Job) -> None:
    key = job.data["record"]
    await record(key, job)
    try:
        pool = await current_services().db()
        await pool.fetchval("SELECT pg_sleep($1)", float(job.data.get("sleep", 0.05)))
    except TRANSIENT_DB_ERRORS as exc:
        raise DependencyUnavailableError("postgres", f"{type(exc).__name__}: {exc}") from exc
    await record(f"{key}:done", job)
