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
waiting for their first attempt have none: the lookup answers "unknown" for them, as it does
for jobs whose record expired or was pushed out. Jobs without an id have none either.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NotRequired, TypedDict, cast

import orjson
from redis.asyncio import Redis

from alchemy.ops.batching import QueueBatchWriter
from alchemy.queue.job import ErrorInfo
from alchemy.queue.keys import QueueKeys
from alchemy.worker.observer import JobEvent, Transition

MAX_TRACKED_STARTS: Final = 100_000  # bound on the in-process map of running attempts


class ErrorJson(TypedDict):
    type: str
    message: str


class JobRecord(TypedDict):
    """One record, as stored and as the admin API returns it."""

    id: str
    queue: str
    state: str  # started | completed | retrying | paused | dead
    attempt: int
    worker: str
    updated_ms: int
    started_ms: int | None  # the start of the attempt this record is about
    first_started_ms: int | None  # the start of the job's first attempt seen here
    finished_ms: int | None
    duration_ms: float | None
    retry_at_ms: int | None  # retrying and paused: when it is due again
    reason: str | None  # dead: the dead-letter reason
    last_error: ErrorJson | None  # the latest error, kept through a later success
    expires_in_s: NotRequired[int]  # added by the lookup


# KEYS[1] current generation, KEYS[2] old generation.
# ARGV[1] ttl ms, ARGV[2] records per generation, ARGV[3] a JSON array of [id, merge, JSON
# record]. With merge = 1 the stored record (from an earlier attempt) lends
# first_started_ms and last_error when the new one has none, so a job retried on another
# process keeps its history. (One JSON argument, not three per record: see APPEND_EVENTS in
# events.py.)
WRITE_RECORDS: Final = """
local cur, old = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[1])
local per_generation = tonumber(ARGV[2])
local batch = cjson.decode(ARGV[3])
local size = redis.call('HLEN', cur)
if size > 0 then
  local left = redis.call('PTTL', cur)
  if size + #batch > per_generation or left < ttl / 2 then
    redis.call('UNLINK', old)
    redis.call('RENAME', cur, old)
    size = 0
  end
end
for _, item in ipairs(batch) do
  local id, rec = item[1], item[3]
  if item[2] == 1 then
    local stored = redis.call('HGET', cur, id) or redis.call('HGET', old, id)
    if stored then
      local ok, o = pcall(cjson.decode, stored)
      if ok and type(o) == 'table' then
        local r = cjson.decode(rec)
        local changed = false
        if r.first_started_ms == cjson.null and o.first_started_ms ~= nil then
          r.first_started_ms = o.first_started_ms
          changed = true
        end
        if r.last_error == cjson.null and o.last_error ~= nil then
          r.last_error = o.last_error
          changed = true
        end
        if changed then rec = cjson.encode(r) end
      end
    end
  end
  redis.call('HSET', cur, id, rec)
end
if size == 0 then
  redis.call('PEXPIRE', cur, ttl)
end
return #batch
"""

FINISHED: Final = frozenset({Transition.COMPLETED, Transition.DEAD})


def _error(error: ErrorInfo | None) -> ErrorJson | None:
    return None if error is None else {"type": error.type, "message": error.message}


@dataclass(slots=True)
class _Latest:
    """The last transition of a job within one batch, with what it inherits."""

    event: JobEvent
    at_ms: int
    started_ms: int | None
    first_started_ms: int | None
    error: ErrorInfo | None
    merge: bool  # ask the stored record for first_started_ms / last_error

    def record(self) -> JobRecord:
        event = self.event
        assert event.job_id is not None
        at = self.at_ms
        duration = event.duration_s
        return {
            "id": event.job_id,
            "queue": event.queue,
            "state": event.transition.value,
            "attempt": event.attempt,
            "worker": event.worker,
            "updated_ms": at,
            "started_ms": self.started_ms,
            "first_started_ms": self.first_started_ms,
            "finished_ms": at if event.transition in FINISHED else None,
            "duration_ms": None if duration is None else round(duration * 1e3, 3),
            "retry_at_ms": None
            if event.retry_in_s is None
            else at + round(event.retry_in_s * 1000),
            "reason": event.reason,
            "last_error": _error(self.error),
        }


class JobRecords(QueueBatchWriter[tuple[JobEvent, int, int | None]]):
    """Observer and extension: keeps each job's last transition as its record.

    The hot path only notes (event, time, start of the attempt); records are built when the
    batch is written, and only for the last transition of each job in the batch (under load
    a job's start and finish usually share a batch)."""

    name = "records"

    def __init__(
        self,
        prefix: str,
        *,
        max_per_queue: int = 10_000,
        ttl: float = 86_400.0,
        max_pending: int = 100_000,
    ) -> None:
        super().__init__(prefix, max_pending=max_pending)
        self.max_per_queue = max_per_queue
        self.ttl_ms = int(ttl * 1000)
        self._started: dict[tuple[str, str, int], int] = {}
        self._script: Any = None

    # -- JobObserver ------------------------------------------------------------------------
    def on_job(self, event: JobEvent) -> None:
        if event.job_id is None:
            return
        now = int(time.time() * 1000)
        key = (event.queue, event.job_id, event.attempt)
        if event.transition is Transition.STARTED:
            if len(self._started) >= MAX_TRACKED_STARTS:
                self._started.clear()
            self._started[key] = now
            self.add((event, now, now))
        else:
            self.add((event, now, self._started.pop(key, None)))

    def on_recovered(self, queue: str, dead_worker: str, recovered: int, poisoned: int) -> None:
        return None  # the recovery step reports counts, not job ids

    def on_held_back(self, queue: str, why: str, wait_ms: int) -> None:
        return None

    # -- writing ----------------------------------------------------------------------------
    async def write(self, redis: Redis, batch: Sequence[tuple[JobEvent, int, int | None]]) -> None:
        if self._script is None:
            self._script = redis.register_script(WRITE_RECORDS)
        by_queue: dict[str, dict[str, _Latest]] = {}
        for event, at, started in batch:
            by_id = by_queue.setdefault(event.queue, {})
            job_id = event.job_id
            assert job_id is not None
            by_id[job_id] = _latest(event, at, started, by_id.get(job_id))
        for queue, by_id in by_queue.items():
            items = [
                (job_id, int(latest.merge), orjson.dumps(latest.record()).decode())
                for job_id, latest in by_id.items()
            ]
            keys = self.keys(queue)
            args = [self.ttl_ms, max(1, self.max_per_queue // 2), orjson.dumps(items)]
            await self._script(keys=[keys.records, keys.records_old], args=args)


def _latest(event: JobEvent, at: int, started: int | None, earlier: _Latest | None) -> _Latest:
    """What this process knows of the job after ``event``; what it cannot know (an earlier
    attempt, maybe elsewhere) is asked of the stored record (``merge``)."""
    first = started if event.attempt == 1 else None
    error = event.error
    merge = event.attempt != 1 or started is None
    if earlier is not None:
        if started is None and earlier.event.attempt == event.attempt:
            started = earlier.started_ms
        if first is None:
            first = earlier.first_started_ms
        if error is None:
            error = earlier.error
        merge = merge or earlier.merge
    merge = merge and (first is None or error is None)
    return _Latest(event, at, started, first, error, merge)


async def read_record(redis: Redis, prefix: str, queue: str, job_id: str) -> JobRecord | None:
    """The record of ``job_id`` on ``queue``, or None (never started, expired, pushed out)."""
    keys = QueueKeys(prefix, queue)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.records, job_id)
        pipe.pttl(keys.records)
        pipe.hget(keys.records_old, job_id)
        pipe.pttl(keys.records_old)
        current, current_ttl, older, older_ttl = await pipe.execute()
    raw, left_ms = (current, current_ttl) if current is not None else (older, older_ttl)
    if raw is None:
        return None
    record = cast(JobRecord, orjson.loads(raw))
    record["expires_in_s"] = max(0, int(left_ms)) // 1000
    return record
