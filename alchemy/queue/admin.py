"""Operator operations on queues: status, the dead-letter list, pause and resume, and the
reads of what :mod:`alchemy.ops` writes next to a queue (recent throughput, job records).

Every read of the protocol's keys by the command line and the HTTP listener is here, so
nothing outside :mod:`alchemy.queue` builds a key to read it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NotRequired, TypedDict, cast

import orjson
from redis.asyncio import Redis

from alchemy.queue.job import DeadEntry, decode_dead_entry
from alchemy.queue.keys import QueueKeys
from alchemy.queue.store import QueueStore

RETRY_BATCH: Final = 500
THROUGHPUT_WINDOW_S: Final = 300  # seconds of per-second counts kept in PREFIX:{QUEUE}:throughput


@dataclass(frozen=True, slots=True)
class ConsumerStatus:
    identity: str
    alive: bool
    processing: int
    heartbeat: dict[str, Any] | None
    heartbeat_age_s: float | None = None  # since its last heartbeat, by Redis's clock


@dataclass(frozen=True, slots=True)
class QueueStatus:
    queue: str
    wait: int
    processing: int
    delayed: int
    dead: int
    paused: bool
    paused_for_ms: int
    consumers: list[ConsumerStatus] = field(default_factory=list)
    # While a dependency is down: {"dependency", "reason", "since_ms", "by", "left_ms"}
    held: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "wait": self.wait,
            "processing": self.processing,
            "delayed": self.delayed,
            "dead": self.dead,
            "paused": self.paused,
            "paused_for_ms": self.paused_for_ms,
            "held": self.held,
            "consumers": [
                {
                    "identity": c.identity,
                    "alive": c.alive,
                    "processing": c.processing,
                    "heartbeat": c.heartbeat,
                    "heartbeat_age_s": c.heartbeat_age_s,
                }
                for c in self.consumers
            ],
        }


@dataclass(frozen=True, slots=True)
class DeadListPage:
    """A slice of a dead-letter list, newest first, and the length of the whole list."""

    entries: list[DeadEntry]
    total: int


@dataclass(frozen=True, slots=True)
class Throughput:
    """Completed and failed attempts of a queue over the last minute and five minutes, in
    every process that writes events (whole seconds before now, Redis clock)."""

    completed_1m: int = 0
    failed_1m: int = 0
    completed_5m: int = 0
    failed_5m: int = 0


class ErrorJson(TypedDict):
    type: str
    message: str


class JobRecord(TypedDict):
    """A job's record (docs/protocol.md, "Job records"), as stored by
    :class:`alchemy.ops.records.JobRecords` and as the admin API returns it."""

    id: str
    queue: str
    state: str  # started | completed | retrying | paused | dead | recovered
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


class QueueAdmin:
    def __init__(self, redis: Redis, *, prefix: str = "alchemy") -> None:
        self.redis = redis
        self.prefix = prefix

    def _store(self, queue: str) -> QueueStore:
        return QueueStore(self.redis, prefix=self.prefix, queue=queue, identity="admin")

    async def status(self, queue: str) -> QueueStatus:
        """Depths, pause and processes of ``queue``. A process's heartbeat age is Redis's
        clock (TIME, read in the same pipeline) minus its score in the consumers set."""
        k = QueueKeys(self.prefix, queue)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(k.wait)
            pipe.zcard(k.delayed)
            pipe.llen(k.dead)
            pipe.exists(k.paused)
            pipe.pttl(k.paused_until)
            pipe.zrange(k.consumers, 0, -1, withscores=True)
            pipe.time()
            pipe.get(k.held)
            pipe.pttl(k.held)
            replies = await pipe.execute()
        wait, delayed, dead, held, pause_ms, members, (seconds, micros), hold, hold_ms = replies
        now_ms = seconds * 1000 + micros / 1000
        identities = [raw.decode() for raw, _ in members]
        ages = [round(max(0.0, now_ms - score) / 1000, 3) for _, score in members]
        async with self.redis.pipeline(transaction=False) as pipe:
            for identity in identities:
                pipe.get(k.heartbeat(identity))
                pipe.llen(k.processing(identity))
            replies = await pipe.execute() if identities else []
        consumers = [
            ConsumerStatus(
                identity=identity,
                alive=beat is not None,
                processing=int(processing),
                heartbeat=json.loads(beat) if beat else None,
                heartbeat_age_s=age,
            )
            for identity, age, beat, processing in zip(
                identities, ages, replies[::2], replies[1::2], strict=True
            )
        ]
        return QueueStatus(
            queue=queue,
            wait=int(wait),
            processing=sum(c.processing for c in consumers),
            delayed=int(delayed),
            dead=int(dead),
            paused=bool(held) or int(pause_ms) > 0,
            paused_for_ms=-1 if held else max(0, int(pause_ms)),
            consumers=consumers,
            held=_hold(hold, int(hold_ms)),
        )

    async def dead_list(self, queue: str, *, offset: int = 0, limit: int = 50) -> list[DeadEntry]:
        """Dead-letter entries, newest first."""
        if limit <= 0:
            return []
        dead_key = QueueKeys(self.prefix, queue).dead
        raw = cast(list[bytes], await self.redis.lrange(dead_key, offset, offset + limit - 1))
        return [decode_dead_entry(entry) for entry in raw]

    async def dead_page(self, queue: str, *, offset: int = 0, limit: int = 50) -> DeadListPage:
        """Dead-letter entries, newest first, with the list's length read in the same round
        trip (one LRANGE of at most ``limit`` entries and one LLEN)."""
        dead_key = QueueKeys(self.prefix, queue).dead
        if limit <= 0:  # LRANGE 0 -1 would be the whole list
            return DeadListPage(entries=[], total=int(await self.redis.llen(dead_key)))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(dead_key, offset, offset + limit - 1)
            pipe.llen(dead_key)
            raw, total = await pipe.execute()
        return DeadListPage([decode_dead_entry(entry) for entry in raw], int(total))

    async def dead_retry(self, queue: str, job_id: str) -> int:
        """Put every dead entry with this job id back on the wait list. Returns how many."""
        return await self._retry_where(queue, lambda entry: entry.id == job_id)

    async def dead_retry_all(self, queue: str) -> int:
        return await self._retry_where(queue, lambda entry: True)

    async def _retry_where(self, queue: str, wanted: Any) -> int:
        store = self._store(queue)
        dead_key = QueueKeys(self.prefix, queue).dead
        retried = 0
        end = -1
        while True:
            # Oldest first, from the tail; each entry moves in one atomic step.
            chunk = cast(list[bytes], await self.redis.lrange(dead_key, end - RETRY_BATCH + 1, end))
            if not chunk:
                return retried
            skipped = 0
            for raw in reversed(chunk):
                entry = decode_dead_entry(raw)
                if wanted(entry) and await store.retry_dead(raw, entry.raw_job):
                    retried += 1
                else:
                    skipped += 1
            if len(chunk) < RETRY_BATCH:
                return retried
            end -= skipped

    async def dead_purge(self, queue: str, job_id: str | None = None) -> int:
        """Delete dead entries: those of one job id, or all of them."""
        dead_key = QueueKeys(self.prefix, queue).dead
        if job_id is None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.llen(dead_key)
                pipe.delete(dead_key)
                count, _ = await pipe.execute()
            return int(count)
        removed = 0
        for entry in await self.dead_list(queue, offset=0, limit=1_000_000):
            if entry.id == job_id:
                removed += int(await self.redis.lrem(dead_key, 1, entry.raw_entry))  # type: ignore[arg-type]
        return removed

    async def pause(self, queue: str) -> None:
        await self.redis.set(QueueKeys(self.prefix, queue).paused, "1")

    async def resume(self, queue: str) -> None:
        k = QueueKeys(self.prefix, queue)
        await self.redis.delete(k.paused, k.paused_until)

    # -- what alchemy.ops writes next to a queue -------------------------------------------
    async def throughput(self, queues: Sequence[str]) -> dict[str, Throughput]:
        """Completed and failed attempts per queue over the last 60 and 300 whole seconds,
        summed from the per-second counts of ``PREFIX:{QUEUE}:throughput`` (Redis clock)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for queue in queues:
                pipe.hgetall(QueueKeys(self.prefix, queue).throughput)
            (now, _), *hashes = await pipe.execute()
        return {
            queue: _sum_counts(counts, int(now))
            for queue, counts in zip(queues, hashes, strict=True)
        }

    async def record(self, queue: str, job_id: str) -> JobRecord | None:
        """The record of ``job_id`` on ``queue`` (the current generation first, then the
        old one), or None: never started, expired or pushed out."""
        k = QueueKeys(self.prefix, queue)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(k.records, job_id)
            pipe.pttl(k.records)
            pipe.hget(k.records_old, job_id)
            pipe.pttl(k.records_old)
            current, current_ttl, older, older_ttl = await pipe.execute()
        raw, left_ms = (current, current_ttl) if current is not None else (older, older_ttl)
        if raw is None:
            return None
        found = cast(JobRecord, orjson.loads(raw))
        found["expires_in_s"] = max(0, int(left_ms)) // 1000
        return found


def _sum_counts(counts: dict[bytes, bytes], now: int) -> Throughput:
    """Fields ``SECOND:c`` (completed) and ``SECOND:f`` (failed) within the window."""
    sums = [0, 0, 0, 0]  # completed 1m, failed 1m, completed 5m, failed 5m
    for name, value in counts.items():
        second, _, kind = name.partition(b":")
        try:
            age = now - int(second)
        except ValueError:
            continue
        if 0 < age <= THROUGHPUT_WINDOW_S:
            failed = kind == b"f"
            sums[2 + failed] += int(value)
            if age <= 60:
                sums[failed] += int(value)
    return Throughput(*sums)


def _hold(raw: bytes | None, left_ms: int) -> dict[str, Any] | None:
    """The held key's JSON (docs/protocol.md) and its time left, or None."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        value = {"dependency": None, "reason": "unreadable hold"}
    return {**value, "left_ms": max(0, left_ms)}
