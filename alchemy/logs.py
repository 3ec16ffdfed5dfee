"""Structured logging: one JSON object per line on stdout (a readable renderer on a TTY).

Every event carries ``ts``, ``level`` and ``event``; job events also carry the context bound
with :func:`structlog.contextvars.bind_contextvars` (queue, job_id, attempt, worker). Known
secret values are replaced by ``***`` in every field before anything is written.

Writing never blocks the caller (the event loop, or a thread logging through the standard
library): lines go to a bounded buffer (:data:`MAX_BUFFERED_BYTES`, ``log.buffer_lines``)
that a daemon thread writes out, everything accumulated in one write(). While standard output
is stuck (a pipe nobody reads) the buffer fills, and further lines are dropped and counted
(:func:`dropped_lines`, the ``alchemy_log_lines_dropped_total`` metric); the first write
that gets through afterwards is followed by one ``log_lines_dropped`` line. At exit,
:func:`flush_logs` waits for the buffer to drain, at most :data:`FLUSH_TIMEOUT_S` seconds.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from threading import get_ident
from typing import Any, BinaryIO, Final

import orjson
import structlog
from structlog.contextvars import _CONTEXT_VARS, STRUCTLOG_KEY_PREFIX, STRUCTLOG_KEY_PREFIX_LEN

MAX_BUFFERED_LINES: Final = 100_000  # the default of log.buffer_lines
MAX_BUFFERED_BYTES: Final = 16 * 1024 * 1024
FLUSH_TIMEOUT_S: Final = 2.0  # how long exit waits for a stuck stdout to take the lines
LINGER_S: Final = 0.01  # after a write, the writer lets lines gather this long

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
        self._cached = (-1, "")  # (second, its date and time of day): one attribute, so a
        # thread never sees the second of one pair with the text of another

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        cached_second, prefix = self._cached
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, prefix)
        event["ts"] = f"{prefix}.{int((now - second) * 1e6):06d}Z"
        return event


def _dumps(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=str)


def _dumps_text(obj: Any, **_: Any) -> str:
    # The standard library's formatter must return text.
    return orjson.dumps(obj, default=str).decode()


class LineSink:
    """A bounded buffer of rendered lines and the thread that writes them.

    Nothing here blocks on the stream. On an event loop, the lines of one turn are collected
    in a plain list and handed to the buffer once, at the end of the turn (one lock a turn,
    not a line); elsewhere (no loop: the command line; another thread: a library logging
    from ``asyncio.to_thread``) each line is handed over at once. The buffer takes a line
    while it holds fewer than ``max_lines`` lines and ``max_bytes`` bytes, and drops and
    counts it otherwise.

    A daemon thread writes whatever has accumulated in one system call, to the stream's file
    descriptor when it has one, so that no lock of the stream's own buffer is held while
    stuck (the interpreter takes that lock at exit). The first batch written after drops
    ends with one ``log_lines_dropped`` line (rendered by ``notice``; None when its level is
    filtered out). Lines whose write failed (a closed stdout) count as dropped too.
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        max_lines: int = MAX_BUFFERED_LINES,
        max_bytes: int = MAX_BUFFERED_BYTES,
        notice: Callable[[int], bytes | str | None] | None = None,
    ) -> None:
        self.stream = stream
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.dropped = 0  # lines dropped or lost in a failed write, ever
        self._notice = notice or _plain_notice
        self._fd = _file_descriptor(stream)
        # The turn: lines logged during the current turn of a running loop, touched only by
        # the thread running that loop, while it runs (so no lock).
        self._turn: list[bytes] = []
        self._turn_loop: asyncio.AbstractEventLoop | None = None
        self._turn_thread = 0
        self._turn_lock = threading.Lock()
        # The buffer (chunks of whole lines), the writer's state and the counts, under the lock.
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._wakeup: queue.SimpleQueue[None] = queue.SimpleQueue()  # one item per nudge
        self._chunks: list[bytes] = []
        self._lines = 0
        self._bytes = 0
        self._unreported = 0  # dropped since the last log_lines_dropped line
        self._idle = True  # the writer waits (or has not started): it needs a nudge
        self._busy = False  # the writer holds a batch that is not written yet
        self._write_started = 0.0  # time.monotonic() when the writer took its batch
        self._closing = False
        self._thread: threading.Thread | None = None

    def write(self, line: bytes | str) -> None:
        data = line if isinstance(line, bytes) else line.encode()
        # The thread running the loop that has the turn: add to the turn, no lock. (Cheaper
        # than asyncio.get_running_loop(), which makes a getpid() system call.)
        loop = self._turn_loop
        if get_ident() == self._turn_thread and loop is not None and loop.is_running():
            self._turn.append(data)
        else:
            self._write_elsewhere(data)

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until the lines logged so far are written, at most ``timeout`` seconds.
        False when the stream did not take them in time (they stay buffered), which is also
        as soon as the write in progress has been stuck for ``timeout`` (so that the
        flushes of one exit do not add up)."""
        self._end_turn_if_safe()
        started = time.monotonic()
        with self._lock:
            if self._idle and self._chunks:
                self._nudge()
            while self._chunks or self._busy:
                deadline = started + timeout
                if self._busy:
                    deadline = min(deadline, self._write_started + timeout)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._drained.wait(remaining)
        return True

    def close(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Flush, then let the writer thread end once idle (a later line starts another)."""
        drained = self.flush(timeout)
        with self._lock:
            self._closing = True
            if self._idle and self._thread is not None:
                self._nudge()
        return drained

    # -- the turn ----------------------------------------------------------------------------
    # Only the thread running _turn_loop adds to _turn, and only while it runs; opening and
    # ending a turn take _turn_lock. A turn ends in a callback at the end of the loop's turn,
    # or, when its loop stopped before that callback ran, before the next line is taken.
    def _write_elsewhere(self, data: bytes) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        with self._turn_lock:
            loop = self._turn_loop
            if loop is not None and not loop.is_running():
                self._end_turn_locked()  # its lines go before this one
                loop = None
            if running is not None and (loop is None or loop is running):
                if loop is None:
                    self._turn_loop, self._turn_thread = running, get_ident()
                    running.call_soon(self._end_turn, running)
                self._turn.append(data)
                return
        self._put([data])  # no loop in this thread, or another thread's loop has the turn

    def _end_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._turn_lock:
            if self._turn_loop is loop:
                self._end_turn_locked()

    def _end_turn_if_safe(self) -> None:
        """Hand the open turn over when no other thread can be adding to it."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        with self._turn_lock:
            loop = self._turn_loop
            if loop is not None and (loop is running or not loop.is_running()):
                self._end_turn_locked()

    def _end_turn_locked(self) -> None:
        lines, self._turn, self._turn_loop, self._turn_thread = self._turn, [], None, 0
        if lines:
            self._put(lines)

    # -- the buffer, from any thread ---------------------------------------------------------
    def _put(self, lines: list[bytes]) -> None:
        # Joined by the thread that rendered them, which frees them at once (a busy loop
        # reuses that memory while it is still in its cache), into one chunk.
        count = len(lines)
        lines.append(b"")
        chunk = b"\n".join(lines)
        with self._lock:
            if self._lines + count <= self.max_lines and self._bytes + len(chunk) <= self.max_bytes:
                self._chunks.append(chunk)
                self._lines += count
                self._bytes += len(chunk)
            else:
                self._put_what_fits(lines[:-1])
            if self._idle:
                self._nudge()

    def _put_what_fits(self, lines: list[bytes]) -> None:
        # Called with the lock held, when the buffer is (nearly) full.
        for data in lines:
            size = len(data) + 1
            if self._lines < self.max_lines and self._bytes + size <= self.max_bytes:
                self._chunks.append(data + b"\n")
                self._lines += 1
                self._bytes += size
            else:
                self.dropped += 1
                self._unreported += 1

    def _nudge(self) -> None:
        # Called with the lock held.
        self._idle = False
        if self._thread is not None:
            self._wakeup.put(None)
            return
        thread = threading.Thread(target=self._write_forever, name="alchemy-log-writer")
        thread.daemon = True  # a stuck stdout must not keep the process alive
        try:
            thread.start()
        except RuntimeError:  # the interpreter is shutting down: the lines stay unwritten
            self._idle = True
            return
        self._thread = thread

    # -- the writer thread -------------------------------------------------------------------
    def _write_forever(self) -> None:
        try:
            while True:
                with self._lock:
                    chunks, lines, dropped = self._chunks, self._lines, self._unreported
                    self._busy = bool(chunks)
                    if chunks:
                        self._chunks, self._lines, self._bytes, self._unreported = [], 0, 0, 0
                        self._write_started = time.monotonic()
                    else:
                        self._idle = True
                        self._drained.notify_all()
                        if self._closing:
                            self._thread = None
                            return
                if not chunks:
                    self._wakeup.get()  # the next _nudge
                    continue
                self._write_batch(chunks, lines, dropped)
                # Lines logged meanwhile wait for the next batch: on a busy loop, one wakeup
                # (and one write) every few milliseconds, not one a turn.
                time.sleep(LINGER_S)
        finally:  # only reached early through an error _write_batch did not expect
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread, self._idle, self._busy = None, True, False
                    self._drained.notify_all()
                    if self._chunks:
                        self._nudge()

    def _write_batch(self, chunks: list[bytes], lines: int, dropped: int) -> None:
        """Write the lines, then, after drops, the one line that says how many."""
        if dropped:
            try:
                notice = self._notice(dropped)
            except Exception:
                notice = None
            if notice is not None:
                chunks.append((notice if isinstance(notice, bytes) else notice.encode()) + b"\n")
        try:
            self._write_all(b"".join(chunks))
        except Exception:  # stdout closed or unusable: the lines are lost; never raise
            with self._lock:
                self.dropped += lines
                self._unreported += lines + dropped  # told with the next batch that gets out

    def _write_all(self, data: bytes) -> None:
        if self._fd is None:
            self.stream.write(data)
            self.stream.flush()
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:  # a non-blocking stdout: wait for room, in this thread
                select.select([], [self._fd], [], 1.0)
                continue
            view = view[written:]


def _file_descriptor(stream: BinaryIO) -> int | None:
    """The stream's descriptor, after flushing what its buffer holds; None without one."""
    try:
        fd = stream.fileno()
        stream.flush()
    except (AttributeError, OSError, ValueError):
        return None
    return fd


def _plain_notice(dropped: int) -> bytes:
    event: dict[str, Any] = {"dropped": dropped, "event": "log_lines_dropped", "level": "warning"}
    return _dumps(_UtcStamper()(None, "warning", event))


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


class _FastLines:
    """The hot path's info lines (one per finished job), rendered to JSON straight into the
    sink: the same line the processors would make (the context bound with
    ``bind_contextvars``, ``event``, ``level``, ``ts``, secrets redacted), at a fraction of
    their cost. Only while the configuration :func:`configure_logging` made is in force:
    once anyone replaced it (``structlog.testing.capture_logs``, another ``configure``),
    :func:`fast_info` says no and the caller logs through structlog."""

    def __init__(
        self, processors: list[Any], wrapper: Any, sink: LineSink, level: int, renderer: Any
    ) -> None:
        self.processors = processors
        self.wrapper = wrapper
        self.renderer = renderer
        self.sink = sink
        self.enabled = level <= logging.INFO
        self.stamp = _UtcStamper()

    def in_force(self) -> bool:
        config = structlog.get_config()
        processors = config["processors"]
        return (
            processors is self.processors
            and bool(processors)
            and processors[-1] is self.renderer
            and config["wrapper_class"] is self.wrapper
        )


_fast: _FastLines | None = None


def fast_info(event: str, fields: dict[str, Any]) -> bool:
    """Log ``event`` at info with ``fields`` (taken over: the caller must not reuse it) the
    cheap way, as one JSON line. False when the JSON configuration of
    :func:`configure_logging` is not in force: then nothing was logged, and the caller logs
    through structlog as usual."""
    fast = _fast
    if fast is None or not fast.in_force():
        return False
    if not fast.enabled:
        return True  # filtered out by the level, as structlog would
    for name, var in _CONTEXT_VARS.items():
        value = var.get()
        if value is not Ellipsis:
            fields.setdefault(name[STRUCTLOG_KEY_PREFIX_LEN:], value)
    fields["event"] = event
    fields["level"] = "info"
    fast.stamp(None, "info", fields)
    if _secrets:
        _redact_event(None, "info", fields)
    fast.sink.write(orjson.dumps(fields, default=str))
    return True


JOB_CONTEXT_KEYS: Final = ("queue", "job_id", "attempt", "worker")
_job_vars: tuple[contextvars.ContextVar[Any], ...] = ()


def bind_job_context(queue: str, job_id: str, attempt: int, worker: str) -> None:
    """``structlog.contextvars.bind_contextvars(queue=..., job_id=..., attempt=...,
    worker=...)`` with the same context variables, without building their names and a
    token mapping on every call (it runs once a job). Binds in the current context."""
    global _job_vars
    job_vars = _job_vars
    if not job_vars:
        structlog.contextvars.bind_contextvars(
            queue=queue, job_id=job_id, attempt=attempt, worker=worker
        )
        _job_vars = tuple(_CONTEXT_VARS[STRUCTLOG_KEY_PREFIX + k] for k in JOB_CONTEXT_KEYS)
        return
    job_vars[0].set(queue)
    job_vars[1].set(job_id)
    job_vars[2].set(attempt)
    job_vars[3].set(worker)


_sink: LineSink | None = None
_dropped_by_replaced_sinks = 0


def flush_logs(timeout: float = FLUSH_TIMEOUT_S) -> bool:
    """Wait (at most ``timeout`` seconds) until the lines logged so far are written."""
    return _sink.flush(timeout) if _sink is not None else True


def dropped_lines() -> int:
    """Lines this process dropped because the output was stuck (or lost with a failed write)."""
    return _dropped_by_replaced_sinks + (_sink.dropped if _sink is not None else 0)


atexit.register(flush_logs)


# Standard-library loggers that ``[log] level = "debug"`` opens to their debug lines: the AI
# SDKs (each request's options, each response, each SDK retry) and their HTTP client (one line
# per request). Every other library (asyncio, redis, aiohttp, httpcore's per-socket steps)
# stays at info whatever the level: their debug lines are noise, not a diagnosis. Secrets are
# masked in these lines as in every other.
DEBUG_LIBRARIES: Final = ("anthropic", "openai", "httpx", "httpx2")


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: BinaryIO | None = None,
    *,
    buffer_lines: int = MAX_BUFFERED_LINES,
) -> None:
    """Configure structlog (and route the standard library's logging through it) once."""
    global _sink, _dropped_by_replaced_sinks, _fast
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
    processors = [*shared, *exceptions, _redact_event, renderer]
    wrapper_class = structlog.make_filtering_bound_logger(numeric_level)
    # The writer thread renders its log_lines_dropped line like any other (None if filtered).
    notices: Any = structlog.wrap_logger(
        structlog.ReturnLogger(), processors=processors, wrapper_class=wrapper_class
    )
    if _sink is not None:
        _sink.close()
        _dropped_by_replaced_sinks += _sink.dropped
    _sink = sink = LineSink(
        out,
        max_lines=buffer_lines,
        notice=lambda dropped: notices.warning("log_lines_dropped", dropped=dropped),
    )
    structlog.configure(
        processors=processors,
        wrapper_class=wrapper_class,
        logger_factory=lambda *_: _SinkLogger(sink),
        cache_logger_on_first_use=True,
    )
    configured = structlog.get_config()["processors"]
    _fast = None
    if use_json:
        _fast = _FastLines(configured, wrapper_class, sink, numeric_level, renderer)
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
    for name in DEBUG_LIBRARIES:
        logging.getLogger(name).setLevel(numeric_level if numeric_level < logging.INFO else 0)
