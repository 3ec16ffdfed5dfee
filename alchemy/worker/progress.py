"""What a running job tells besides its end: its progress (``await job.progress(...)``) and
its result (what the handler returns).

:class:`ProgressThrottle` is one consumer's :class:`~alchemy.queue.job.ProgressReporter`: it
turns reports into ``progress`` transitions for the observers (the events stream, the job
records), a new step at once and the same step at most every :data:`PROGRESS_INTERVAL`
seconds, the latest value being sent when that time is up. A handler that reports in a
tight loop costs a dictionary lookup per call and two events a second.

:func:`encode_result` turns a handler's return value into the JSON text the records and the
events stream keep, capped at :data:`MAX_RESULT_BYTES` (docs/protocol.md, "Results").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from alchemy.queue.job import Job
from alchemy.worker.observer import JobEvent, Observers, Transition

PROGRESS_INTERVAL: Final = 0.5  # seconds between two reports of the same step
MAX_RESULT_BYTES: Final = 16 * 1024  # a result's JSON beyond this is replaced by a marker
RESULT_HEAD_CHARS: Final = 1024  # characters of a too large result's JSON kept in the marker


def encode_result(value: Any) -> str:
    """``value`` as JSON text of at most :data:`MAX_RESULT_BYTES` bytes (UTF-8). Larger:
    ``{"_truncated": true, "bytes": N, "head": "<its first 1,024 characters>"}``; not JSON
    (a set, an object): ``{"_unserializable": "TypeError: ..."}``. Never raises."""
    try:
        raw = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        note = f"{type(exc).__name__}: {exc}"[:500]
        return orjson.dumps({"_unserializable": note}).decode()
    if len(raw) <= MAX_RESULT_BYTES:
        return raw.decode()
    head = raw[: RESULT_HEAD_CHARS * 4].decode("utf-8", "ignore")[:RESULT_HEAD_CHARS]
    return orjson.dumps({"_truncated": True, "bytes": len(raw), "head": head}).decode()


class _Run:
    """The reports of one run of a job."""

    __slots__ = ("latest", "sent", "sent_at", "timer")

    def __init__(self) -> None:
        self.latest: tuple[float, str] | None = None
        self.sent: tuple[float, str] | None = None
        self.sent_at = float("-inf")
        self.timer: asyncio.TimerHandle | None = None


class ProgressThrottle:
    """One consumer's progress reports, throttled per run of a job."""

    def __init__(
        self,
        queue: str,
        worker: str,
        observers: Observers,
        *,
        interval: float = PROGRESS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.worker = worker
        self.observers = observers
        self.interval = interval
        self.clock = clock
        self._runs: dict[int, _Run] = {}

    def report(self, job: Job, fraction: float, step: str) -> None:
        run = self._runs.get(job.runner.run)
        if run is None:
            run = self._runs[job.runner.run] = _Run()
        run.latest = (fraction, step)
        now = self.clock()
        same_step = run.sent is not None and run.sent[1] == step
        if not same_step or now - run.sent_at >= self.interval:
            self._send(job, run, now)
        elif run.timer is None:
            wait = self.interval - (now - run.sent_at)
            run.timer = asyncio.get_running_loop().call_later(wait, self._send_latest, job, run)

    def _send_latest(self, job: Job, run: _Run) -> None:
        run.timer = None
        if run.latest != run.sent and self._runs.get(job.runner.run) is run:
            self._send(job, run, self.clock())

    def _send(self, job: Job, run: _Run, now: float) -> None:
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        assert run.latest is not None
        run.sent, run.sent_at = run.latest, now
        fraction, step = run.latest
        self.observers.on_job(
            JobEvent(
                self.queue,
                Transition.PROGRESS,
                job.id,
                job.attempt,
                self.worker,
                recoveries=job.recoveries,
                progress=fraction,
                step=step,
            )
        )

    def finish(self, job: Job) -> tuple[float, str] | None:
        """Forget ``job``'s run (it ended); the latest progress it reported, if any."""
        if not self._runs:
            return None
        run = self._runs.pop(job.runner.run, None)
        if run is None:
            return None
        if run.timer is not None:
            run.timer.cancel()
        return run.latest
