"""Operator operations on queues: status, the dead-letter list, pause and resume, and the
reads of what :mod:`alchemy.ops` writes next to a queue (recent throughput, job records).

Every read of the protocol's keys by the command line and the HTTP listener is here, so
nothing outside :mod:`alchemy.queue` builds a key to read it.

Retrying and purging walk a dead-letter list of any length in bounded steps: each step is
one read-only script that looks at a few thousand entries inside Redis and returns only
those wanted (:data:`~alchemy.queue.scripts.DEAD_SCAN`), then one script that moves or
removes those. No step decodes more than ``ALL_STEP_BYTES`` of entries in this process, and
the event loop runs between steps.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NotRequired, TypedDict, cast

import orjson

from alchemy.queue.job import DEAD_JOB_HEAD, DeadEntry, dead_entry_id_needles, decode_dead_entry
from alchemy.queue.keys import QueueKeys
from alchemy.queue.store import DeadScan, QueueStore
from alchemy.queue.topology import RedisClient, same_node

THROUGHPUT_WINDOW_S: Final = 300  # seconds of per-second counts kept in PREFIX:{QUEUE}:throughput
PER_MINUTE_WINDOW: Final = 60  # minutes of per-minute counts kept in PREFIX:{QUEUE}:per-minute
# One step of a search by id: entries looked at (in Redis), and bytes of them at most.
ID_STEP_ENTRIES: Final = 2000
ID_STEP_BYTES: Final = 4 * 1024 * 1024
# One step of "every entry": entries (returned and decoded here), and bytes at most.
ALL_STEP_ENTRIES: Final = 200
ALL_STEP_BYTES: Final = 1024 * 1024
TRUNCATED_NOTE: Final = (
    f"a too_large entry keeps only the first {DEAD_JOB_HEAD} bytes of its job, so it cannot be"
    " retried: push the whole job again from its producer"
)


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
    dead_trimmed: int = 0  # dead-letter entries dropped, the oldest, to keep the list at its cap
    # Delayed jobs held for a budget (budget_exhausted), per scope: "brand:<uuid>" -> count
    budget_held: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "wait": self.wait,
            "processing": self.processing,
            "delayed": self.delayed,
            "dead": self.dead,
            "dead_trimmed": self.dead_trimmed,
            "paused": self.paused,
            "paused_for_ms": self.paused_for_ms,
            "held": self.held,
            "budget_held": self.budget_held,
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


class AttemptJson(TypedDict):
    """One run of a job in its record's ``attempts``."""

    attempt: int
    worker: str  # the process that ran it (for a recovered run: the one that died)
    outcome: str  # running | completed | retrying | paused | deferred | held | dead | recovered
    started_ms: int | None
    finished_ms: int | None
    duration_ms: float | None
    error: ErrorJson | None
    reason: str | None


class JobRecord(TypedDict):
    """A job's record (docs/protocol.md, "Job records"), as stored by
    :class:`alchemy.ops.records.JobRecords`; the lookup (:meth:`QueueAdmin.record`) parses
    ``result``, which is stored as JSON text."""

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
    progress: NotRequired[float | None]  # the latest job.progress of the current attempt
    step: NotRequired[str | None]
    result: NotRequired[Any]  # completed: the handler's return value (stored as JSON text)
    attempts: NotRequired[list[AttemptJson]]  # the latest runs, oldest first
    attempts_dropped: NotRequired[int]  # older runs no longer listed
    expires_in_s: NotRequired[int]  # added by the lookup


@dataclass(frozen=True, slots=True)
class DeadRetry:
    """What a retry of dead entries did."""

    retried: int = 0  # entries whose job went back to the wait list
    truncated: int = 0  # entries left alone: too_large ones keep only the job's head


def _sendable(job_id: str) -> bool:
    """An id Redis can be sent (UTF-8); no entry has any other."""
    try:
        job_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


PROVIDER_HOLD: Final = "provider:"  # the held key's dependency for a provider's pause


class QueueAdmin:
    def __init__(self, redis: RedisClient, *, prefix: str = "alchemy") -> None:
        self.redis = redis
        self.prefix = prefix

    def _store(self, queue: str) -> QueueStore:
        return QueueStore(self.redis, prefix=self.prefix, queue=queue, identity="admin")

    async def status(self, queue: str) -> QueueStatus:
        """Depths, pause and processes of ``queue``. A process's heartbeat age is Redis's
        clock (TIME, read in the same pipeline from the queue's node) minus its score in the
        consumers set."""
        k = QueueKeys(self.prefix, queue)
        queue_node = await same_node(self.redis, k.wait)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(k.wait)
            pipe.zcard(k.delayed)
            pipe.llen(k.dead)
            pipe.exists(k.paused)
            pipe.pttl(k.paused_until)
            pipe.zrange(k.consumers, 0, -1, withscores=True)
            pipe.execute_command("TIME", **queue_node)
            pipe.get(k.held)
            pipe.pttl(k.held)
            pipe.get(k.dead_trimmed)
            replies = await pipe.execute()
        (
            wait,
            delayed,
            dead,
            held,
            pause_ms,
            members,
            (seconds, micros),
            hold,
            hold_ms,
            trimmed,
        ) = replies
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
            dead_trimmed=int(trimmed or 0),
            budget_held=await self._store(queue).budget_holds() if delayed else {},
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

    async def dead_retry(self, queue: str, job_id: str) -> DeadRetry:
        """Put every dead entry with this job id back on the wait list, oldest first."""
        if not _sendable(job_id):
            return DeadRetry()
        return await self._retry(queue, job_id)

    async def dead_retry_all(self, queue: str) -> DeadRetry:
        """Every dead entry back on the wait list, oldest first, but truncated ones."""
        return await self._retry(queue, None)

    async def _retry(self, queue: str, job_id: str | None) -> DeadRetry:
        store = self._store(queue)
        retried = truncated = 0

        async def move(scan: DeadScan) -> int:
            nonlocal retried, truncated
            moves = []
            for position, raw in scan.found:
                entry = decode_dead_entry(raw)
                if entry.truncated:
                    truncated += 1
                else:
                    moves.append((scan.end_of(position), raw, entry.raw_job))
            retried += await store.retry_dead(moves)
            return len(moves)

        await self._walk(store, job_id, move)
        return DeadRetry(retried=retried, truncated=truncated)

    async def dead_purge(self, queue: str, job_id: str | None = None) -> int:
        """Delete dead entries: those of one job id, or all of them."""
        store = self._store(queue)
        if job_id is None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.llen(store.keys.dead)
                # Freed by Redis in the background. (Sent by name: a Cluster pipeline's
                # unlink() is a coroutine of its own, outside the transaction.)
                pipe.execute_command("UNLINK", store.keys.dead)
                count, _ = await pipe.execute()
            return int(count)
        if not _sendable(job_id):
            return 0
        removed = 0

        async def purge(scan: DeadScan) -> int:
            nonlocal removed
            removals = [(scan.end_of(position), raw) for position, raw in scan.found]
            removed += await store.purge_dead(removals)
            return len(removals)

        await self._walk(store, job_id, purge)
        return removed

    @staticmethod
    async def _walk(
        store: QueueStore, job_id: str | None, act: Callable[[DeadScan], Awaitable[int]]
    ) -> None:
        """Step through the entries ``store``'s dead-letter list holds now, oldest first,
        handing each step's entries (those of ``job_id``, or all) to ``act``, which says how
        many of them it took off the list. Entries pushed meanwhile are left for the next
        walk: a retried job that fails again at once is not chased round and round."""
        if job_id is None:
            step, most, needles = ALL_STEP_ENTRIES, ALL_STEP_BYTES, []
        else:
            step, most, needles = ID_STEP_ENTRIES, ID_STEP_BYTES, dead_entry_id_needles(job_id)
        position = trimmed = 0
        end: int | None = None  # the position of the first entry pushed after the walk began
        while True:
            scan = await store.scan_dead(
                position,
                trimmed,
                max_entries=step if end is None else min(step, end - position),
                max_bytes=most,
                job_id=job_id or "",
                needles=needles,
            )
            # Trims moved every position down, as did the entries ``act`` takes off.
            end = scan.length if end is None else end - (scan.trimmed - trimmed)
            taken = await act(scan) if scan.found else 0
            position, trimmed, end = scan.position - taken, scan.trimmed, end - taken
            if scan.done or position >= end:
                return

    async def pause(self, queue: str) -> None:
        await self.redis.set(QueueKeys(self.prefix, queue).paused, "1")

    async def resume(self, queue: str) -> None:
        """Start the queue again: its pause, its retry-after pause, and a provider's pause
        for its own spend limit (a dependency's hold stays: its probe lifts it)."""
        k = QueueKeys(self.prefix, queue)
        await self.redis.delete(k.paused, k.paused_until)
        hold = _hold(cast(bytes | None, await self.redis.get(k.held)), 0)
        dependency = hold.get("dependency") if hold else None
        if isinstance(dependency, str) and dependency.startswith(PROVIDER_HOLD):
            await self._store(queue).release_hold(dependency)

    async def release_budget_holds(self, queues: Sequence[str], scope: str) -> int:
        """Jobs of ``queues`` held for ``scope``'s budget run now (the budget was raised)."""
        released = 0
        for queue in queues:
            released += await self._store(queue).release_budget_holds(scope)
        return released

    # -- what alchemy.ops writes next to a queue -------------------------------------------
    async def throughput(self, queues: Sequence[str]) -> dict[str, Throughput]:
        """Completed and failed attempts per queue over the last 60 and 300 whole seconds,
        summed from the per-second counts of ``PREFIX:{QUEUE}:throughput`` (Redis clock: on a
        Cluster, the clock of the first queue's node)."""
        if not queues:
            return {}
        first_node = await same_node(self.redis, QueueKeys(self.prefix, queues[0]).throughput)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.execute_command("TIME", **first_node)
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
        result = found.get("result")
        if isinstance(result, str):
            # Not JSON (written by something else): shown as the text it is.
            with contextlib.suppress(orjson.JSONDecodeError):
                found["result"] = orjson.loads(result)
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
