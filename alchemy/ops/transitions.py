"""One writer for what a job's transitions leave in Redis: events-stream entries and records.

Each transition the engine reports is noted with the time (one buffer append on the job's
path); the batch is written off the job's path (:mod:`alchemy.ops.batching`), per queue in
one Lua call (:data:`alchemy.queue.scripts.TRANSITIONS_WRITE`) that appends the stream's
entries and counts and writes the records. What each part writes is built by its own
module: :class:`alchemy.ops.events.StreamEntries` and
:class:`alchemy.ops.records.RecordEntries`. A process with both on (the default) runs one
:class:`TransitionWriter` with both parts, so a batch costs one round trip and one buffer,
not two of each (issue 12: 109 -> 88 µs of the worker's CPU per no-op job);
:class:`alchemy.ops.events.EventStream` and :class:`alchemy.ops.records.JobRecords` are
the writer with one part.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final, Protocol

from alchemy.ops.batching import DEFAULT_MAX_PENDING, QueueBatchWriter
from alchemy.queue import scripts
from alchemy.queue.topology import RedisClient
from alchemy.worker.observer import JobEvent

Noted = tuple[JobEvent, int]  # an event and when it was heard, Unix ms

# The arguments of a part a writer does not have: the script leaves its keys alone.
NO_ENTRIES: Final[list[Any]] = [0, 0, 0, 0, "", 0]
NO_RECORDS: Final[list[Any]] = [0, 0, "", 0]


class Part(Protocol):
    name: str

    def args(self, noted: Sequence[Noted]) -> list[Any]:
        """The script's arguments for this part, from one queue's share of a batch (oldest
        first)."""
        ...


class TransitionWriter(QueueBatchWriter[Noted]):
    """Observer and extension: writes each transition through the parts it has."""

    def __init__(
        self,
        prefix: str,
        *,
        entries: Part | None = None,
        records: Part | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if entries is None and records is None:
            raise ValueError("a transition writer needs the events stream, records or both")
        super().__init__(prefix, max_pending=max_pending)
        self.entries = entries
        self.records = records
        # The name the writer's log lines give ("events", "records", "events+records").
        self.name = "+".join(part.name for part in (entries, records) if part is not None)
        # Records are only kept for jobs with an id; the stream has every transition.
        self._only_with_id = entries is None
        self._script: Any = None

    # -- JobObserver ------------------------------------------------------------------------
    def on_job(self, event: JobEvent) -> None:
        if self._only_with_id and event.job_id is None:
            return
        self.add((event, int(time.time() * 1000)))

    def on_held_back(self, queue: str, why: str, wait_ms: int) -> None:
        return None  # a throttled claim is not a job transition; metrics count it

    # -- writing ----------------------------------------------------------------------------
    async def write(self, redis: RedisClient, batch: Sequence[Noted]) -> None:
        if self._script is None:
            self._script = redis.register_script(scripts.TRANSITIONS_WRITE)
        by_queue: dict[str, list[Noted]] = {}
        for noted in batch:
            queue = noted[0].queue
            share = by_queue.get(queue)
            if share is None:
                by_queue[queue] = [noted]
            else:
                share.append(noted)
        entries, records = self.entries, self.records
        for queue, share in by_queue.items():
            keys = self.keys(queue)
            args = entries.args(share) if entries is not None else NO_ENTRIES
            args = args + (records.args(share) if records is not None else NO_RECORDS)
            names = [keys.events, keys.throughput, keys.per_minute, keys.records, keys.records_old]
            await self._script(keys=names, args=args)
