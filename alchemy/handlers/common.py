"""What the content, research and media handlers share: reading job data, how a run's
failures reach the engine and the job's row, and the end hook that marks the row of a job
the engine gave up on.

    a run raised                          the engine hears               the row
    a database connection lost/refused    DependencyUnavailableError     unchanged
                                          ("postgres": held, no attempt
                                          spent)
    a transaction rolled back             RetryableError                 unchanged
    PermanentError                        (as is): dead-lettered         failed, with its
                                                                         message (and the raw
                                                                         reply, if any)
    LeaseLostError (fenced out)           nothing: the run completes;    written by the owner
                                          the owner that took the        that took it over
                                          lease over commits
    anything else                         (as is): retried or dead       failed by ``on_dead``
                                                                         when dead

Handler modules see the engine only through the job and error types and the producer:
``on_dead`` (called by the engine for every death it decides) does the rest.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, cast

import structlog

from alchemy.db import TRANSIENT_DB_ERRORS, job_error_for
from alchemy.errors import PermanentError
from alchemy.logs import redact
from alchemy.paid.leases import LeaseLostError
from alchemy.providers.base import OutputInvalidError
from alchemy.queue.job import Death, Job
from alchemy.services import current_services
from alchemy.storable import storable, storable_problem

log = structlog.get_logger("alchemy.handlers")

MAX_ROW_ERROR: Final = 2000
MAX_RAW_OUTPUT: Final = 20_000

MarkFailed = Callable[[str, dict[str, Any]], Awaitable[object]]


def uuid_field(data: Mapping[str, Any], key: str, *, required: bool = True) -> uuid.UUID | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise PermanentError(f"job data needs {key!r} (a UUID)")
        return None
    if not isinstance(value, str):
        raise PermanentError(f"job data {key!r} must be a UUID string")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise PermanentError(f"job data {key!r} is not a UUID: {value!r}") from None


def str_field(
    data: Mapping[str, Any], key: str, choices: tuple[str, ...] | None = None, *, where: str = ""
) -> str | None:
    value = data.get(key)
    name = f"{where}.{key}" if where else key
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PermanentError(f"job data {name!r} must be a string")
    if choices is not None and value not in choices:
        raise PermanentError(f"job data {name!r} must be one of {', '.join(choices)}")
    return value


def check_storable(data: Mapping[str, Any]) -> None:
    """Job data that PostgreSQL could not store (a NUL character, NaN or Infinity) is a
    permanent error before anything is paid for, not a failed write after."""
    problem = storable_problem(dict(data))
    if problem:
        raise PermanentError(f"job data: {problem}")


def row_error(exc: BaseException) -> tuple[str, dict[str, Any]]:
    """The readable message and the detail JSON saved on a failed row."""
    message = redact(str(exc)) or type(exc).__name__
    detail: dict[str, Any] = {"type": type(exc).__name__}
    if isinstance(exc, OutputInvalidError):
        detail["raw_output"] = redact(exc.raw_text)[:MAX_RAW_OUTPUT]
    return str(storable(message[:MAX_ROW_ERROR])), cast(dict[str, Any], storable(detail))


async def best_effort(what: str, action: Callable[[], Awaitable[object]]) -> None:
    """Run ``action()``; log instead of raising when it fails, so the job's own error is
    what the engine sees."""
    try:
        await action()
    except Exception as exc:
        log.warning("handler_step_failed", step=what, error=f"{type(exc).__name__}: {exc}")


def mark_row(sql: str, key: object, *more: object) -> MarkFailed:
    """A ``mark_failed`` for :func:`run_work`: ``sql`` with ($1 ``key``, $2 message, $3 detail
    JSON, then ``more``)."""

    async def mark(message: str, detail: dict[str, Any]) -> None:
        pool = await current_services().db()
        await pool.execute(sql, key, message, detail, *more)

    return mark


async def run_work(work: Callable[[], Awaitable[None]], mark_failed: MarkFailed) -> None:
    """Run a handler's ``work`` as the module docstring's table says."""
    try:
        try:
            await work()
        except TRANSIENT_DB_ERRORS as exc:
            mapped = job_error_for(exc)
            assert mapped is not None
            raise mapped from exc
    except LeaseLostError:
        return  # logged with the lease; the owner that took the piece over commits it
    except PermanentError as exc:
        message, detail = row_error(exc)
        await best_effort("mark_failed", lambda: mark_failed(message, detail))
        raise


async def mark_dead(job: Job, death: Death, sql: str) -> None:
    """The end hook's work: ``sql`` ($1 job id, $2 message, $3 detail JSON) marks the row
    the job was working on failed, with the engine's reason. It must only touch a row this
    job still has in progress, so a row the handler marked keeps its own error and a row
    another job works on now is left alone."""
    pool = await current_services().db()
    message = redact(death.error.message)[:MAX_ROW_ERROR] or f"dead-lettered: {death.reason}"
    detail = {"type": death.error.type, "reason": death.reason, "attempt": job.attempt}
    await pool.execute(sql, job.id, storable(message), detail)
