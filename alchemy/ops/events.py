"""Job transitions for everyone else: a Redis Stream per queue, and Python callbacks.

:class:`EventStream` appends every transition the engine reports (started, completed,
retrying, paused, dead, recovered) to ``PREFIX:{QUEUE}:events``, capped with
``XADD MAXLEN ~``, so a program in any language can follow its jobs with ``XREAD``
(docs/protocol.md, "The events stream"). It also counts completed and failed attempts per
second for the admin API's recent throughput (read by
:meth:`alchemy.queue.admin.QueueAdmin.throughput`) and per minute for the dashboard's hour
(:meth:`alchemy.queue.admin.QueueAdmin.per_minute`). Both are written, with the job records
when they are on, by one Lua call per queue per batch (:mod:`alchemy.ops.transitions`).

:class:`EventHooks` calls Python code on ``completed`` and ``failed`` transitions in the
worker process. :data:`hooks` is the instance ``python -m alchemy run`` wires in, so a
handler module can register callbacks when it is imported.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import orjson
import structlog

from alchemy.ops.transitions import TransitionWriter
from alchemy.queue.admin import PER_MINUTE_WINDOW, THROUGHPUT_WINDOW_S
from alchemy.worker.observer import JobEvent, Transition
from alchemy.worker.supervisor import Running

log = structlog.get_logger("alchemy.events")

FAILED: Final = frozenset({Transition.RETRYING, Transition.DEAD})


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def event_fields(event: JobEvent, ts_ms: int) -> list[str]:
    """The stream entry of one job transition, as field, value, field, value, ..."""
    fields = [
        "event",
        event.transition,  # a str (StrEnum)
        "attempt",
        str(event.attempt),
        "worker",
        event.worker,
        "ts",
        str(ts_ms),
    ]
    if event.job_id is not None:
        fields += ("job_id", event.job_id)
    if event.duration_s is not None:
        fields += ("duration_ms", _ms(event.duration_s))
    if event.pickup_s is not None:
        fields += ("pickup_ms", _ms(event.pickup_s))
    error = event.error
    if error is not None:
        fields += ("error_type", error.type, "error_message", error.message)
    if event.reason is not None:
        fields += ("reason", event.reason)
    if event.retry_in_s is not None:
        fields += ("retry_in_ms", str(round(event.retry_in_s * 1000)))
    if event.dead_worker is not None:
        fields += ("dead_worker", event.dead_worker)
    if event.transition is Transition.PROGRESS and event.progress is not None:
        fields += ("progress", f"{event.progress:.4g}", "step", event.step or "")
    if event.result is not None:
        fields += ("result", event.result)
    return fields


class StreamEntries:
    """The events part of a :class:`TransitionWriter`: one stream entry per transition, and
    the queue's completed and failed counts (``TRANSITIONS_WRITE``, ARGV[1..6]). The entries
    are built when the batch is written, not on the job's path."""

    name = "events"

    def __init__(self, max_length: int = 10_000) -> None:
        self.max_length = max_length

    def args(self, noted: Sequence[tuple[JobEvent, int]]) -> list[Any]:
        done = failed = 0
        entries = []
        for event, ts_ms in noted:
            transition = event.transition
            if transition is Transition.COMPLETED:
                done += 1
            elif transition in FAILED:
                failed += 1
            entries.append(event_fields(event, ts_ms))
        return [
            self.max_length,
            THROUGHPUT_WINDOW_S,
            done,
            failed,
            orjson.dumps(entries),
            PER_MINUTE_WINDOW,
        ]


class EventStream(TransitionWriter):
    """Observer and extension: appends each transition to its queue's stream (the writer
    with the events part only; ``python -m alchemy run`` adds records to the same writer
    when they are on)."""

    def __init__(
        self, prefix: str, *, identity: str, max_length: int = 10_000, max_pending: int = 100_000
    ) -> None:
        super().__init__(prefix, entries=StreamEntries(max_length), max_pending=max_pending)
        self.identity = identity


Callback = Callable[[JobEvent], Awaitable[None] | None]


class EventHooks:
    """In-process callbacks on finished jobs: ``on_completed`` and ``on_failed``.

    ``on_failed`` callbacks hear every failed attempt: ``retrying`` (it runs again) and
    ``dead`` (it will not); ``event.transition`` tells which. A callback may be a plain
    function (it runs inside the engine's call, so it must be quick) or a coroutine function
    (run as a task of its own). What a callback raises is logged and otherwise ignored.
    """

    def __init__(self) -> None:
        self._completed: list[Callback] = []
        self._failed: list[Callback] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def on_completed(self, callback: Callback) -> Callback:
        """Register ``callback`` for completed jobs (usable as a decorator)."""
        self._completed.append(callback)
        return callback

    def on_failed(self, callback: Callback) -> Callback:
        """Register ``callback`` for failed attempts (usable as a decorator)."""
        self._failed.append(callback)
        return callback

    def remove(self, callback: Callback) -> None:
        for registered in (self._completed, self._failed):
            while callback in registered:
                registered.remove(callback)

    def clear(self) -> None:
        self._completed.clear()
        self._failed.clear()

    # -- JobObserver ------------------------------------------------------------------------
    def on_job(self, event: JobEvent) -> None:
        if event.transition is Transition.COMPLETED:
            callbacks = self._completed
        elif event.transition in FAILED:
            callbacks = self._failed
        else:
            return
        for callback in callbacks:
            self._call(callback, event)

    def on_held_back(self, queue: str, why: str, wait_ms: int) -> None:
        return None

    def _call(self, callback: Callback, event: JobEvent) -> None:
        try:
            result = callback(event)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
        except Exception as exc:
            log.error("event_hook_failed", hook=_name(callback), error=repr(exc))

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event_hook_failed", error=repr(task.exception()))

    async def wait_idle(self, within: float = 5.0) -> None:
        """Wait for the coroutine callbacks still running (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=within)

    # -- Extension: the worker waits for running callbacks before it closes its services --
    async def start(self, running: Running) -> None:
        return None

    async def stopping(self) -> None:
        return None

    async def close(self) -> None:
        await self.wait_idle()


def _name(callback: Callback) -> str:
    return getattr(callback, "__qualname__", None) or repr(callback)


hooks: Final = EventHooks()
"""The process-wide hooks that ``python -m alchemy run`` wires in."""
