"""Bounded reads for a person looking at queues (the dashboard): the age of the oldest
waiting job, completed and failed per minute over the last hour, dead-letter entries by
reason and error type, one dead-letter entry found again near where it was listed, and a
search of the newest entries for a job id.

Each read costs Redis the same whatever the length of the lists: O(1) list work, a hash of
at most ~120 fields, or a fixed number of entries read (and at most so many bytes of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from alchemy.queue import scripts
from alchemy.queue.admin import PER_MINUTE_WINDOW
from alchemy.queue.job import DeadEntry, dead_entry_id_needles, decode_dead_entry
from alchemy.queue.keys import QueueKeys
from alchemy.queue.store import QueueStore
from alchemy.queue.topology import RedisClient, same_node

GROUP_ENTRIES: Final = 1000  # the newest dead-letter entries counted by reason and type
GROUP_BYTES: Final = 4 * 1024 * 1024  # ... and at most so many bytes of them
FIND_ENTRIES: Final = 10_000  # the newest entries searched for a job id
FIND_BYTES: Final = 16 * 1024 * 1024
NEAR: Final = 25  # entries either side of where an entry was listed, looked at to find it


@dataclass(frozen=True, slots=True)
class PerMinute:
    """Completed and failed attempts of each of the last ``PER_MINUTE_WINDOW`` minutes,
    oldest first, the last being the current (partial) minute; ``start_ms`` is when the
    first began (Redis clock)."""

    start_ms: int
    completed: list[int]
    failed: list[int]


@dataclass(frozen=True, slots=True)
class DeadGroup:
    reason: str
    error_type: str
    count: int


@dataclass(frozen=True, slots=True)
class DeadGroups:
    """The newest ``looked_at`` entries of a list of ``total``, by reason and error type,
    most frequent first."""

    looked_at: int
    total: int
    groups: list[DeadGroup]


@dataclass(frozen=True, slots=True)
class FoundEntry:
    position: int  # from the newest (0), as a page's offset counts
    entry: DeadEntry


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class QueueBrowser:
    def __init__(self, redis: RedisClient, *, prefix: str = "alchemy") -> None:
        self.redis = redis
        self.prefix = prefix
        self._oldest: Any = None
        self._groups: Any = None

    async def oldest_waiting_s(self, queues: Sequence[str]) -> dict[str, float | None]:
        """Seconds since the oldest waiting job of each queue was enqueued (its
        ``enqueued_at``, Redis clock now), or None: nothing waits, or it has no
        ``enqueued_at``."""
        if self._oldest is None:
            self._oldest = self.redis.register_script(scripts.OLDEST_ENQUEUED)
        ages: dict[str, float | None] = {}
        for queue in queues:
            value, seconds, micros = await self._oldest(keys=[QueueKeys(self.prefix, queue).wait])
            ages[queue] = None
            if value:
                try:
                    enqueued_ms = float(_text(value))
                except ValueError:
                    continue
                now_ms = int(seconds) * 1000 + int(micros) / 1000
                ages[queue] = round(max(0.0, now_ms - enqueued_ms) / 1000, 3)
        return ages

    async def per_minute(self, queues: Sequence[str]) -> dict[str, PerMinute]:
        """The per-minute counts each worker writes with its events (Redis clock)."""
        if not queues:
            return {}
        # The clock of the first queue's node (on a Cluster a keyless TIME goes anywhere).
        node = await same_node(self.redis, QueueKeys(self.prefix, queues[0]).per_minute)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.execute_command("TIME", **node)
            for queue in queues:
                pipe.hgetall(QueueKeys(self.prefix, queue).per_minute)
            (now, _), *hashes = await pipe.execute()
        current = int(now) // 60
        first = current - PER_MINUTE_WINDOW + 1
        out: dict[str, PerMinute] = {}
        for queue, counts in zip(queues, hashes, strict=True):
            completed = [0] * PER_MINUTE_WINDOW
            failed = [0] * PER_MINUTE_WINDOW
            for name, value in counts.items():
                minute, _, kind = _text(name).partition(":")
                try:
                    index = int(minute) - first
                    count = int(value)
                except ValueError:
                    continue
                if 0 <= index < PER_MINUTE_WINDOW:
                    (failed if kind == "f" else completed)[index] += count
            out[queue] = PerMinute(first * 60_000, completed, failed)
        return out

    async def dead_groups(
        self, queue: str, *, newest: int = GROUP_ENTRIES, max_bytes: int = GROUP_BYTES
    ) -> DeadGroups:
        """The newest dead-letter entries by reason and error type, counted inside Redis."""
        if self._groups is None:
            self._groups = self.redis.register_script(scripts.DEAD_GROUPS)
        dead = QueueKeys(self.prefix, queue).dead
        reply = await self._groups(keys=[dead], args=[newest, max_bytes])
        groups = []
        for n in range(2, len(reply), 2):
            reason, _, error_type = _text(reply[n]).partition("\n")
            groups.append(DeadGroup(reason, error_type, int(reply[n + 1])))
        groups.sort(key=lambda g: (-g.count, g.reason, g.error_type))
        return DeadGroups(int(reply[0]), int(reply[1]), groups)

    async def dead_near(
        self, queue: str, job_id: str, *, offset: int, total: int
    ) -> FoundEntry | None:
        """The entry of ``job_id`` listed at ``offset`` of a list then ``total`` long: new
        entries pushed since moved it down by as many; retries, purges and trims move it
        less. Looks at :data:`NEAR` entries either side of where it should be."""
        dead = QueueKeys(self.prefix, queue).dead
        length = int(await self.redis.llen(dead))
        expected = offset + max(0, length - total)
        start = max(0, expected - NEAR)
        raw = cast(list[bytes], await self.redis.lrange(dead, start, expected + NEAR))
        for n, item in enumerate(raw):
            entry = decode_dead_entry(item)
            if entry.id == job_id:
                return FoundEntry(start + n, entry)
        return None

    async def dead_find(
        self, queue: str, job_id: str, *, newest: int = FIND_ENTRIES
    ) -> tuple[FoundEntry | None, int]:
        """The newest entry of ``job_id`` among the newest ``newest`` entries (searched
        inside Redis, at most :data:`FIND_BYTES` of them), and how many were searched."""
        store = QueueStore(self.redis, prefix=self.prefix, queue=queue, identity="dashboard")
        length = int(await self.redis.llen(store.keys.dead))
        start = max(0, length - newest)
        scan = await store.scan_dead(
            start,
            int(await self.redis.get(store.keys.dead_trimmed) or 0),
            max_entries=newest,
            max_bytes=FIND_BYTES,
            job_id=job_id,
            needles=dead_entry_id_needles(job_id),
        )
        searched = scan.position - start
        if not scan.found:
            return None, searched
        position, raw = scan.found[-1]  # oldest first: the last found is the newest
        return FoundEntry(scan.length - 1 - position, decode_dead_entry(raw)), searched
