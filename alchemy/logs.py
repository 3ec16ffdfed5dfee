"""Structured logging: one JSON object per line on stdout (a readable renderer on a TTY).

Every event carries ``ts``, ``level`` and ``event``; job events also carry the context bound
with :func:`structlog.contextvars.bind_contextvars` (queue, job_id, attempt, worker). Known
secret values are replaced by ``***`` in every field before anything is written.

Lines logged during one turn of the event loop are written with a single write() at the end
of that turn, so a busy worker does not pay a system call per job; outside a running loop,
and at exit, lines are written at once.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from collections.abc import Iterable, MutableMapping
from typing import Any, BinaryIO

import orjson
import structlog

_secrets: tuple[str, ...] = ()


def register_secrets(values: Iterable[str]) -> None:
    """Values that must never be written (API keys, passwords in URLs)."""
    global _secrets
    _secrets = tuple(sorted({v for v in values if len(v) >= 4}, key=len, reverse=True))


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _secrets:
        return event
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
        elif not isinstance(value, int | float | bool | type(None)):
            event[key] = redact(str(value))
    return event


class _UtcStamper:
    """Adds ``ts``: UTC in ISO 8601 with microseconds and a Z, like structlog's
    ``TimeStamper(fmt="iso", utc=True)``, at a fraction of its cost (the date and time of
    day are formatted once per second; a busy worker stamps thousands of lines a second)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event["ts"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event


def _dumps(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=str)


def _dumps_text(obj: Any, **_: Any) -> str:
    # The standard library's formatter must return text.
    return orjson.dumps(obj, default=str).decode()


class LineSink:
    """Collects rendered lines and writes them once per event-loop turn."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, line: bytes | str) -> None:
        self._pending.append(line.encode() if isinstance(line, str) else line)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            self.stream.write(b"\n".join(lines) + b"\n")
            self.stream.flush()
        except Exception:  # stdout closed or unusable: nothing left to tell, never loop
            pass


class _SinkLogger:
    """The structlog logger: hands each rendered line to the sink, whatever the level."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink

    def msg(self, message: bytes | str) -> None:
        self._sink.write(message)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class _SinkHandler(logging.Handler):
    """Standard library records (asyncio, redis, aiohttp) through the same sink."""

    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sink.write(self.format(record))
        except Exception:
            self.handleError(record)


_sink: LineSink | None = None


def flush_logs() -> None:
    if _sink is not None:
        _sink.flush()


def configure_logging(
    level: str = "info", fmt: str = "auto", stream: BinaryIO | None = None
) -> None:
    """Configure structlog (and route the standard library's logging through it) once."""
    global _sink
    out = stream or sys.stdout.buffer
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    console = structlog.dev.ConsoleRenderer(colors=out.isatty())
    renderer: Any = structlog.processors.JSONRenderer(serializer=_dumps) if use_json else console
    text_renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps_text) if use_json else console
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _UtcStamper(),
    ]
    exceptions: list[Any] = [structlog.processors.format_exc_info] if use_json else []
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    if _sink is not None:
        _sink.flush()
    _sink = sink = LineSink(out)
    atexit.register(sink.flush)
    structlog.configure(
        processors=[*shared, *exceptions, _redact_event, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=lambda *_: _SinkLogger(sink),
        cache_logger_on_first_use=True,
    )
    handler = _SinkHandler(sink)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exceptions,
                _redact_event,
                text_renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.INFO))
