"""What the content, research and media handlers share: reading job data, telling whether
a failure is the job's last, and turning database trouble into a retry."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import structlog

from alchemy.config import Config
from alchemy.db import TRANSIENT_DB_ERRORS
from alchemy.errors import PermanentError, RateLimitedError, RetryableError
from alchemy.logs import redact
from alchemy.ops.events import hooks
from alchemy.providers.base import OutputInvalidError
from alchemy.queue.job import Job
from alchemy.services import current_services
from alchemy.worker.observer import JobEvent, Transition

log = structlog.get_logger("alchemy.handlers")

MAX_ROW_ERROR = 2000
MAX_RAW_OUTPUT = 20_000


def uuid_field(data: Mapping[str, Any], key: str, *, required: bool = True) -> uuid.UUID | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise PermanentError(f"job data needs {key!r} (a UUID)")
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise PermanentError(f"job data {key!r} is not a UUID: {value!r}") from None


def str_field(
    data: Mapping[str, Any], key: str, choices: tuple[str, ...] | None = None
) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PermanentError(f"job data {key!r} must be a string")
    if choices is not None and value not in choices:
        raise PermanentError(f"job data {key!r} must be one of {', '.join(choices)}")
    return value


def is_last_attempt(job: Job, exc: BaseException, config: Config) -> bool:
    """Whether the engine will dead-letter the job after this exception."""
    if isinstance(exc, RateLimitedError):
        return False  # the queue pauses and the job comes back without spending an attempt
    if isinstance(exc, PermanentError):
        return True
    try:
        max_attempts = config.queue(job.queue).max_attempts
    except KeyError:
        return False
    return job.attempt >= max_attempts


def row_error(exc: BaseException) -> tuple[str, dict[str, Any]]:
    """The readable message and the detail JSON saved on a failed row."""
    message = redact(str(exc)) or type(exc).__name__
    detail: dict[str, Any] = {"type": type(exc).__name__}
    if isinstance(exc, OutputInvalidError):
        detail["raw_output"] = redact(exc.raw_text)[:MAX_RAW_OUTPUT]
    return message[:MAX_ROW_ERROR], detail


@contextlib.asynccontextmanager
async def database_errors_retry() -> AsyncIterator[None]:
    """A lost or refused database connection is a retry with the queue's backoff."""
    try:
        yield
    except TRANSIENT_DB_ERRORS as exc:
        raise RetryableError(f"database unavailable: {type(exc).__name__}: {exc}") from exc


async def best_effort(what: str, action: Any) -> None:
    """Run ``action()`` (a coroutine function); log instead of raising when it fails, so
    the job's own error is what the engine sees."""
    try:
        await action()
    except Exception as exc:
        log.warning("handler_step_failed", step=what, error=f"{type(exc).__name__}: {exc}")


async def run_or_mark_failed(
    job: Job,
    config: Config,
    work: Callable[[], Awaitable[None]],
    mark_failed: Callable[[str, dict[str, Any]], Awaitable[object]],
    *,
    what: str,
) -> None:
    """Run a handler's ``work``; database trouble becomes a retry, and when the failure is
    the job's last, ``mark_failed(message, detail)`` records it on the job's row (best
    effort) before the error goes on to the engine."""
    try:
        async with database_errors_retry():
            await work()
    except Exception as exc:
        if is_last_attempt(job, exc, config):
            message, detail = row_error(exc)
            await best_effort(what, lambda: mark_failed(message, detail))
        raise


def fail_rows_the_engine_gives_up_on(handler: str, sql: str, *, what: str) -> None:
    """Mark a job's row failed when the engine, not the handler, dead-letters the job: a
    process died with it too often (``poison``) or its last attempt ran past the queue
    ``timeout`` (the handler was cancelled, so it never saw a failure to record).

    Registers an ``on_failed`` hook that runs ``sql`` ($1 job id, $2 message, $3 detail JSON)
    for dead jobs of the queues whose handler is ``handler`` ("module:function"); ``sql``
    must only touch a row still ``processing``, so a row the handler already marked keeps
    its own error."""

    async def mark(event: JobEvent) -> None:
        if event.transition is not Transition.DEAD or event.job_id is None:
            return
        services = current_services()
        try:
            if services.config.queue(event.queue).handler != handler:
                return
        except KeyError:
            return
        error = event.error
        message = error.message if error else f"dead-lettered: {event.reason}"
        detail = {
            "type": error.type if error else "DeadLettered",
            "reason": event.reason,
            "attempt": event.attempt,
        }

        async def update() -> None:
            pool = await services.db()
            await pool.execute(sql, event.job_id, redact(message)[:MAX_ROW_ERROR], detail)

        await best_effort(what, update)

    hooks.on_failed(mark)
