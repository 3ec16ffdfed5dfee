"""PostgreSQL: the schema migrations (:mod:`alchemy.db.migrate`) and how database failures
become job errors.

The process's asyncpg pool is :meth:`alchemy.services.Services.db`. Every statement is
parametrized (``$1``, ``$2``...); no SQL is built from strings.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import asyncpg

from alchemy.errors import DependencyUnavailableError, JobError, RetryableError

# Failures that pass when the server is back: lost or refused connections (08xxx), an
# operator or crash shutdown (57xxx), too many connections (53300), serialization failures
# and deadlocks (40xxx), a closed connection and plain socket errors or connect timeouts.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
# Of those, the ones that say "the server is not there": everything but a rolled-back
# transaction, which is a retry of this job alone.
UNAVAILABLE_DB_ERRORS: tuple[type[BaseException], ...] = tuple(
    kind for kind in TRANSIENT_DB_ERRORS if kind is not asyncpg.TransactionRollbackError
)
DEPENDENCY: str = "postgres"  # the name handler modules list in REQUIRES


def is_transient_db_error(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_DB_ERRORS)


def job_error_for(exc: BaseException) -> JobError | None:
    """The job error for a transient database failure, or None for any other exception:
    the server away is :class:`DependencyUnavailableError` ("postgres": the engine holds
    every queue that needs it, no attempt spent); a serialization failure or deadlock is a
    plain retry."""
    if isinstance(exc, asyncpg.exceptions.TransactionRollbackError):
        return RetryableError(f"database transaction rolled back: {exc}")
    if isinstance(exc, UNAVAILABLE_DB_ERRORS):
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return DependencyUnavailableError(DEPENDENCY, f"postgres unavailable: {detail}")
    return None


@contextlib.contextmanager
def database_errors_as_job_errors() -> Iterator[None]:
    """Turn a transient database failure raised inside into its job error
    (:func:`job_error_for`)."""
    try:
        yield
    except TRANSIENT_DB_ERRORS as exc:
        mapped = job_error_for(exc)
        assert mapped is not None
        raise mapped from exc


@contextlib.contextmanager
def db_unavailable_is_retryable() -> Iterator[None]:
    """Turn a transient database failure into a :class:`RetryableError` (queue backoff)."""
    try:
        yield
    except TRANSIENT_DB_ERRORS as exc:
        raise RetryableError(f"database unavailable: {type(exc).__name__}: {exc}") from exc


async def init_connection(conn: asyncpg.Connection) -> None:
    """Every pooled connection reads and writes ``json``/``jsonb`` as Python objects."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=_dumps, decoder=json.loads, schema="pg_catalog", format="text"
        )


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
