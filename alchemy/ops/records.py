"""A capped, expiring record of each job's last transition, to look a job up by id.

Per queue the records live in two generations, each a hash of job id → JSON record:
``PREFIX:{QUEUE}:records`` (the current one, written) and ``PREFIX:{QUEUE}:records:old``
(the previous one, only read). One Lua step per queue and batch writes the batch into the
current generation; when that already holds ``max_per_queue / 2`` records, or is older than
``ttl / 2``, it first becomes the old one (the old one before it is dropped with UNLINK).
Each generation expires ``ttl`` after it was started. So a queue never keeps more than
``max_per_queue`` records (plus at most one batch), none older than ``ttl``, and a record
stays at least until ``max_per_queue / 2`` newer ones were written or ``ttl / 2`` passed;
writing one costs Redis one HSET and no index, so finished jobs are cheap to remember.

A job has a record once a worker has started it (or dead-lettered it unread). Jobs still
waiting for their first attempt have none: the lookup
(:meth:`alchemy.queue.admin.QueueAdmin.record`) answers "unknown" for them, as it does for
jobs whose record expired or was pushed out. Jobs without an id have none either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from alchemy.ops.transitions import NO_RECORDS, TransitionWriter
from alchemy.ops.transitions import Noted as _Noted
from alchemy.queue.admin import AttemptJson, ErrorJson, JobRecord
from alchemy.queue.job import ErrorInfo
from alchemy.worker.observer import JobEvent, Transition

FINISHED: Final = frozenset({Transition.COMPLETED, Transition.DEAD})
MAX_ATTEMPTS_KEPT: Final = 20  # runs listed in a record's attempts; older ones are counted
# Flags of one record written (scripts.TRANSITIONS_WRITE, the records part):
LEND: Final = 1  # an earlier run may be stored: lend its history (first start, error, runs)
PATCH: Final = 2  # only progress: update the stored record of the same attempt
JOINS: Final = 4  # the first run listed ended a run the stored record lists as running


def _error(error: ErrorInfo | None) -> ErrorJson | None:
    return None if error is None else {"type": error.type, "message": error.message}


def _started_ms(event: JobEvent, at: int) -> int | None:
    """When the attempt ``event`` is about started, if it ran in this process."""
    if event.transition is Transition.STARTED:
        return at
    if event.duration_s is not None:  # the handler ran: it started duration ago
        return at - round(event.duration_s * 1000)
    return None  # unreadable, recovered, poison: not an attempt of this process


def _runs(history: Sequence[_Noted]) -> tuple[list[AttemptJson], bool]:
    """The runs ``history`` (no progress events) shows, and whether the first one is the end
    of a run started before this batch."""
    runs: list[AttemptJson] = []
    joins = False
    for event, at in history:
        started = _started_ms(event, at)
        if event.transition is Transition.STARTED:
            runs.append(_run(event, started, None))
            continue
        last = runs[-1] if runs else None
        if last is not None and last["outcome"] == "running" and last["attempt"] == event.attempt:
            runs[-1] = _run(event, last["started_ms"], at)
        else:
            joins = joins or not runs
            runs.append(_run(event, started, at))
    return runs[-MAX_ATTEMPTS_KEPT:], joins


def _run(event: JobEvent, started: int | None, ended: int | None) -> AttemptJson:
    running = event.transition is Transition.STARTED
    duration = event.duration_s
    return {
        "attempt": event.attempt,
        "worker": event.dead_worker or event.worker,
        "outcome": "running" if running else str(event.transition),
        "started_ms": started,
        "finished_ms": ended,
        "duration_ms": None if duration is None else round(duration * 1e3, 3),
        "error": _error(event.error),
        "reason": event.reason,
    }


def _record(history: Sequence[_Noted]) -> tuple[JobRecord, int]:
    """The record of a job after the events of ``history`` (one batch, oldest first), and
    the flags that say what the stored record (an earlier run, maybe in another process)
    must lend it (:data:`LEND`, :data:`PATCH`, :data:`JOINS`)."""
    if len(history) == 2:
        (begun, begun_at), (ended, ended_at) = history
        if (
            begun.transition is Transition.STARTED
            and ended.transition is not Transition.STARTED
            and ended.transition is not Transition.PROGRESS
            and ended.attempt == begun.attempt
        ):
            return _one_run(begun, begun_at, ended, ended_at)
    return _record_general(history)


def _record_general(history: Sequence[_Noted]) -> tuple[JobRecord, int]:
    ran = [noted for noted in history if noted[0].transition is not Transition.PROGRESS]
    reports = [noted[0] for noted in history if noted[0].transition is Transition.PROGRESS]
    if not ran:
        event, at = history[-1]
        record = _blank(event, at, "started")
        record["progress"], record["step"] = event.progress, event.step
        record["attempts"] = [_run(event._replace(transition=Transition.STARTED), None, None)]
        return record, PATCH
    first: int | None = None
    error: ErrorInfo | None = None
    started: int | None = None
    for event, at in ran:
        started = _started_ms(event, at)
        if first is None and event.attempt == 1:
            first = started
        if event.error is not None:
            error = event.error
    event, at = ran[-1]
    transition = event.transition
    record = _blank(event, at, transition)
    runs, joins = _runs(ran)
    latest = reports[-1] if reports else event
    duration = event.duration_s
    # The latest run's start as its own STARTED event heard it, when that is in this batch
    # (finish time minus duration is later by whatever ran around the handler).
    latest_run = runs[-1]["started_ms"] if runs else None
    record["started_ms"] = started if latest_run is None else latest_run
    record["first_started_ms"] = first
    record["finished_ms"] = at if transition in FINISHED else None
    record["duration_ms"] = None if duration is None else round(duration * 1e3, 3)
    retry_in = event.retry_in_s
    record["retry_at_ms"] = None if retry_in is None else at + round(retry_in * 1000)
    record["reason"] = event.reason
    record["last_error"] = _error(error)
    record["progress"], record["step"] = latest.progress, latest.step
    record["result"] = event.result
    record["attempts"] = runs
    # Nothing to inherit only for a job's very first run, started in this batch or not.
    if any(e.first_run for e, _ in ran):
        return record, 0
    return record, LEND | (JOINS if joins else 0)


def _one_run(begun: JobEvent, begun_at: int, event: JobEvent, at: int) -> tuple[JobRecord, int]:
    """:func:`_record` of the usual batch, a start and the end of that run (under load a
    job's start and finish share a batch), without its loops: the same record, at a third
    of the cost."""
    transition = event.transition
    duration = event.duration_s
    duration_ms = None if duration is None else round(duration * 1e3, 3)
    retry_in = event.retry_in_s
    error = event.error if event.error is not None else begun.error
    record: JobRecord = {
        "id": event.job_id or "",
        "queue": event.queue,
        "state": transition,
        "attempt": event.attempt,
        "worker": event.worker,
        "updated_ms": at,
        "started_ms": begun_at,
        "first_started_ms": begun_at if begun.attempt == 1 else None,
        "finished_ms": at if transition in FINISHED else None,
        "duration_ms": duration_ms,
        "retry_at_ms": None if retry_in is None else at + round(retry_in * 1000),
        "reason": event.reason,
        "last_error": _error(error),
        "progress": event.progress,
        "step": event.step,
        "result": event.result,
        "attempts": [
            {
                "attempt": event.attempt,
                "worker": event.dead_worker or event.worker,
                "outcome": str(transition),
                "started_ms": begun_at,
                "finished_ms": at,
                "duration_ms": duration_ms,
                "error": _error(event.error),
                "reason": event.reason,
            }
        ],
        "attempts_dropped": 0,
    }
    return record, 0 if begun.first_run or event.first_run else LEND


def _blank(event: JobEvent, at: int, state: str) -> JobRecord:
    return {
        "id": event.job_id or "",
        "queue": event.queue,
        "state": state,
        "attempt": event.attempt,
        "worker": event.worker,
        "updated_ms": at,
        "started_ms": None,
        "first_started_ms": None,
        "finished_ms": None,
        "duration_ms": None,
        "retry_at_ms": None,
        "reason": None,
        "last_error": None,
        "progress": None,
        "step": None,
        "result": None,
        "attempts": [],
        "attempts_dropped": 0,
    }


class RecordEntries:
    """The records part of a :class:`TransitionWriter` (``TRANSITIONS_WRITE``, ARGV[7..10]):
    a record for the last transition of each job in the batch (under load a job's start and
    finish usually share a batch), built when the batch is written."""

    name = "records"

    def __init__(self, max_per_queue: int = 10_000, ttl: float = 86_400.0) -> None:
        self.max_per_queue = max_per_queue
        self.ttl_ms = int(ttl * 1000)

    def args(self, noted: Sequence[_Noted]) -> list[Any]:
        by_id: dict[str, list[_Noted]] = {}
        for item in noted:
            job_id = item[0].job_id
            if job_id is None:
                continue  # no id, no record
            history = by_id.get(job_id)
            if history is None:
                by_id[job_id] = [item]
            else:
                history.append(item)
        if not by_id:
            return NO_RECORDS  # the script leaves the records alone
        dumps = orjson.dumps
        items = []
        for job_id, history in by_id.items():
            record, flags = _record(history)
            items.append((job_id, flags, dumps(record).decode()))
        per_generation = max(1, self.max_per_queue // 2)
        return [self.ttl_ms, per_generation, dumps(items), MAX_ATTEMPTS_KEPT]


class JobRecords(TransitionWriter):
    """Observer and extension: keeps each job's last transition as its record (the writer
    with the records part only; ``python -m alchemy run`` writes them with the events stream
    when both are on)."""

    def __init__(
        self,
        prefix: str,
        *,
        max_per_queue: int = 10_000,
        ttl: float = 86_400.0,
        max_pending: int = 100_000,
    ) -> None:
        super().__init__(prefix, records=RecordEntries(max_per_queue, ttl), max_pending=max_pending)
