"""Operator operations on queues: status, the dead-letter list, pause and resume."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final, cast

from redis.asyncio import Redis

from alchemy.queue.job import DeadEntry, decode_dead_entry
from alchemy.queue.keys import QueueKeys
from alchemy.queue.store import QueueStore

RETRY_BATCH: Final = 500


@dataclass(frozen=True, slots=True)
class ConsumerStatus:
    identity: str
    alive: bool
    processing: int
    heartbeat: dict[str, Any] | None


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

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "wait": self.wait,
            "processing": self.processing,
            "delayed": self.delayed,
            "dead": self.dead,
            "paused": self.paused,
            "paused_for_ms": self.paused_for_ms,
            "consumers": [
                {
                    "identity": c.identity,
                    "alive": c.alive,
                    "processing": c.processing,
                    "heartbeat": c.heartbeat,
                }
                for c in self.consumers
            ],
        }


class QueueAdmin:
    def __init__(self, redis: Redis, *, prefix: str = "alchemy") -> None:
        self.redis = redis
        self.prefix = prefix

    def _store(self, queue: str) -> QueueStore:
        return QueueStore(self.redis, prefix=self.prefix, queue=queue, identity="admin")

    async def status(self, queue: str) -> QueueStatus:
        k = QueueKeys(self.prefix, queue)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(k.wait)
            pipe.zcard(k.delayed)
            pipe.llen(k.dead)
            pipe.exists(k.paused)
            pipe.pttl(k.paused_until)
            pipe.zrange(k.consumers, 0, -1)
            wait, delayed, dead, held, pause_ms, members = await pipe.execute()
        identities = [raw.decode() for raw in members]
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
            )
            for identity, beat, processing in zip(
                identities, replies[::2], replies[1::2], strict=True
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
        )

    async def dead_list(self, queue: str, *, offset: int = 0, limit: int = 50) -> list[DeadEntry]:
        """Dead-letter entries, newest first."""
        if limit <= 0:
            return []
        dead_key = QueueKeys(self.prefix, queue).dead
        raw = cast(list[bytes], await self.redis.lrange(dead_key, offset, offset + limit - 1))
        return [decode_dead_entry(entry) for entry in raw]

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
